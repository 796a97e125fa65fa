"""What a handler gets: a ``Call`` (the request, the store, the gate), and its inputs read.

Query, path parameters and the Idempotency-Key header are read here; bodies in bodies.py
and validation.py. The answer a handler returns is encoded by ``encode``, unless it is a
``Stream``, which the endpoint sends chunk by chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.types import Receive

from .. import errors
from ..pool import keyed
from ..pool.keyed import Idempotency
from ..pool.megadeal import MegadealGate
from ..pool.store import Store
from .bodies import BodyDeadlines
from .middleware import LOG_FIELDS, STARTED
from .problems import field_error, from_validation_error, invalid_fields

MAX_QUERY_BYTES = 8192  # room for a sharded pool's audit cursor (cursor.MAX_LENGTH)


@dataclass(slots=True)
class Services:
    """What the app's lifespan opens for the handlers; the endpoints hold it from the start."""

    max_uploads: int  # large bodies read or written at once (MAX_UPLOADS); more are refused
    max_body_bytes: int  # MAX_BODY_BYTES: an upload's body
    idempotency_ttl_ms: int  # IDEMPOTENCY_TTL_S
    deadlines: BodyDeadlines  # of every body read (BODY_TIMEOUT_S)
    store: Store = None  # type: ignore[assignment]
    gate: MegadealGate = None  # type: ignore[assignment]
    uploads: int = 0


@dataclass(slots=True)
class Call:
    """What a handler works with: the request, and the pool's store and MEGADEAL gate."""

    request: Request
    store: Store
    gate: MegadealGate
    idempotency: Idempotency | None = None  # its Idempotency-Key, on the routes that take one

    def note(self, **fields: Any) -> None:
        """Add fields about the operation to this request's log line."""
        self.request.scope.setdefault(LOG_FIELDS, {}).update(fields)  # as middleware.note, one call less

    @property
    def started(self) -> float:
        """When the request arrived (time.perf_counter)."""
        started: float = self.request.scope[STARTED]
        return started

    async def gone(self) -> None:
        """Complete when the client has gone away (once its body is read: nothing else comes)."""
        await client_gone(self.request.receive)


async def client_gone(receive: Receive) -> None:
    """Complete when the client of ``receive`` has gone away (its body read and dropped)."""
    while (await receive())["type"] != "http.disconnect":
        pass


Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Stream:
    """A handler's answer sent as it is made: ``chunks`` of ``media_type`` (one of its
    Operation's ``streams``), each sent once the one before is taken, with no length."""

    media_type: str
    chunks: AsyncGenerator[bytes, None]


def encode(result: Any) -> bytes:
    """A handler's answer as JSON: a pydantic model, a dataclass, or bytes already."""
    if isinstance(result, BaseModel):
        return result.model_dump_json().encode()
    if isinstance(result, bytes):
        return result
    return orjson.dumps(result, default=_model_fields, option=orjson.OPT_UTC_Z)


def _model_fields(value: object) -> dict[str, Any]:
    """orjson's fallback for a pydantic model inside a dataclass (a discount: plain fields)."""
    if isinstance(value, BaseModel):
        return vars(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def parse_model(
    values: dict[str, Any], model: type[BaseModel], context: dict[str, Any] | None = None
) -> BaseModel:
    try:
        return model.model_validate(values, context=context)
    except ValidationError as exc:
        raise from_validation_error(exc, model) from None


def parse_query(request: Request, model: type[BaseModel], context: dict[str, Any]) -> BaseModel:
    """Validate the query against ``model`` (with ``context``, models.POOL_SLOTS); a parameter
    given twice is refused, as in a body.

    A query over MAX_QUERY_BYTES is refused before it is parsed, so no query costs more
    than a few microseconds whatever it holds.
    """
    if len(request.scope["query_string"]) > MAX_QUERY_BYTES:
        raise errors.QueryTooLong(f"a query may hold at most {MAX_QUERY_BYTES} bytes")
    params = request.query_params.multi_items()
    seen: set[str] = set()
    for name, _ in params:  # one pass: the cost is linear in the query's length
        if name in seen:
            raise invalid_fields([field_error((name,), "appears more than once: send it once")], 1)
        seen.add(name)
    return parse_model(dict(params), model, context)


def idempotency_of(request: Request, given: list[bytes], services: Services) -> Idempotency:
    """The request's Idempotency-Key (``given``: each header's value), validated; its body is
    identified next."""
    scope = request.scope
    if len(given) > 1:
        raise invalid_fields([field_error(("header", keyed.HEADER), "send it once")], 1)
    key = given[0]
    if not keyed.KEY.fullmatch(key):
        problem = "must be 1-255 visible ASCII characters (0x21-0x7E)"
        raise invalid_fields([field_error(("header", keyed.HEADER), problem)], 1)
    digest = hashlib.sha256(key).hexdigest()[:32]
    request_line = f"{scope['method']} {scope['path']}\n".encode()  # request.url costs µs to build
    record = services.store.keys.idempotency(scope.get(keyed.KEY_ID, keyed.OPEN_SCOPE), digest)
    return Idempotency(record, "", services.idempotency_ttl_ms, request_line)
