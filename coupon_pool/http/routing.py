"""An operation declared once: method, path, inputs, answer and errors, by keyword.

From an ``Operation`` come both its Starlette route (the inputs read and validated, the
handler called, the answer encoded) and its part of the OpenAPI document (openapi.py), so
the two cannot drift apart. A handler gets a ``Call`` and its validated inputs by name
(``body``, ``query``, ``path``) and returns its answer: a model, a dataclass or bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from .. import errors
from ..errors import CouponError
from ..models import POOL_SLOTS
from ..pool import keyed
from ..pool.keyed import REPLAYED_HEADER, Idempotency
from ..pool.keys import Keys
from ..pool.megadeal import MegadealGate
from ..pool.store import Store
from .auth import Role
from .bodies import read_json
from .lookups import Lookup, budgeted
from .middleware import STARTED, note
from .problems import field_error, from_validation_error, invalid_fields
from .validation import validate_json

# The errors any operation with a JSON body can answer before its handler runs.
BODY_ERRORS: tuple[type[errors.CouponError], ...] = (
    errors.InvalidJson,
    errors.RequestTimeout,
    errors.BadContentLength,
    errors.BodyTooLarge,
    errors.UnsupportedMediaType,
    errors.ValidationFailed,
)
MAX_QUERY_BYTES = 1024
# What every route can answer: no such route or method, or a fault of the service.
ANY_ROUTE_ERRORS: tuple[type[errors.CouponError], ...] = (
    errors.NotFound,
    errors.MethodNotAllowed,
    errors.CouponError,
    # Answered by the connection layer (server.py), before the app sees the request.
    errors.InvalidHttp,
    errors.RequestTimeout,
    errors.HeadersTooLarge,
    errors.TooManyConnections,
)


@dataclass(slots=True)
class Services:
    """What the app's lifespan opens for the handlers; the endpoints hold it from the start."""

    max_uploads: int  # large bodies read or written at once (MAX_UPLOADS); more are refused
    idempotency_ttl_ms: int  # IDEMPOTENCY_TTL_S
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
        note(self.request, **fields)

    @property
    def started(self) -> float:
        """When the request arrived (time.perf_counter)."""
        started: float = self.request.scope[STARTED]
        return started

    async def gone(self) -> None:
        """Complete when the client has gone away (once its body is read: nothing else comes)."""
        receive = self.request.receive
        while (await receive())["type"] != "http.disconnect":
            pass


Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, kw_only=True)
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: type[BaseModel] | None = None
    response: type[Any] | None = None  # a pydantic model or a dataclass; None: bytes of media_type
    status: int = 200
    media_type: str = "application/json"
    errors: tuple[type[CouponError], ...] = ()  # those its handler raises
    role: Role | None = Role.CLIENT  # the API key it needs; None: open to anyone
    uses_store: bool = True  # it calls Redis, so it can answer 503 store_unavailable
    large_body: bool = False  # its body may reach MAX_BODY_BYTES, and reaches the handler as bytes
    idempotent: bool = False  # it takes an Idempotency-Key (pool/keyed.py)
    lookup: Lookup | None = None  # it looks a coupon up by code: see Lookup

    def all_errors(self) -> tuple[type[CouponError], ...]:
        """Every error this operation can answer, derived from what it declares."""
        found: list[type[CouponError]] = list(self.errors)
        if self.body:
            found += BODY_ERRORS
        if self.large_body:
            found.append(errors.UploadsBusy)
        if self.idempotent:
            found += (errors.ValidationFailed, errors.IdempotencyKeyReused, errors.IdempotencyKeyInProgress)
        if self.query:
            found.append(errors.QueryTooLong)
        if self.query or self.path_params:
            found.append(errors.ValidationFailed)
        if self.lookup is not None:
            found.append(errors.TooManyFailedLookups)
        if self.role is not None:
            found.append(errors.Unauthenticated)
        if self.role is Role.ADMIN:
            found.append(errors.Forbidden)
        if self.uses_store:
            found.append(errors.StoreUnavailable)
        if self.method == "POST":  # a change: refused when Redis is at its maxmemory
            found.append(errors.StoreFull)
        found += ANY_ROUTE_ERRORS
        return tuple(dict.fromkeys(found))

    def endpoint(self, services: Services) -> Callable[[Request], Awaitable[Response]]:
        """The Starlette endpoint: inputs validated, the handler called, its answer encoded."""
        handler, status, media_type = self.handler, self.status, self.media_type
        if self.lookup is not None:
            handler = budgeted(handler, self.lookup, services)
        body, query, path_params, large = self.body, self.query, self.path_params, self.large_body
        keyed = self.idempotent

        def keyed_call(request: Request) -> Idempotency | None:
            return (
                idempotency_of(request, services.store.keys, services.idempotency_ttl_ms) if keyed else None
            )

        async def endpoint(request: Request) -> Response:
            inputs: dict[str, Any] = {}
            if body is not None:
                inputs["body"] = validate_json(await read_json(request), body)
            if query is not None:
                # What a cursor may name depends on the pool: its slots.
                inputs["query"] = parse_query(request, query, {POOL_SLOTS: len(services.store.layout.slots)})
            if path_params is not None:
                inputs["path"] = parse_model(request.path_params, path_params)
            call = Call(request, services.store, services.gate)
            if idem := keyed_call(request):
                idem.identify(inputs["body"].model_dump_json().encode())  # spacing and defaults aside
                call.idempotency = idem
                return await answer_keyed(services, handler, call, inputs, status, media_type)
            result = await handler(call, **inputs)
            return encode(result, status, media_type)

        async def large_endpoint(request: Request) -> Response:
            # Up to MAX_BODY_BYTES each, read whole and then validated and written: a bound on
            # how many at once bounds the memory they take. Refused before any byte is read.
            if services.uploads >= services.max_uploads:
                raise errors.UploadsBusy(
                    f"{services.uploads} uploads are under way in this process, the most it takes at once; "
                    "send this one when one of them is done",
                    headers={"Retry-After": "1"},
                )
            services.uploads += 1
            try:
                raw = await read_json(request, request.app.state.settings.max_body_bytes)
                call = Call(request, services.store, services.gate)
                if idem := keyed_call(request):
                    # The body is identified by its bytes, hashed where it is validated (off the
                    # event loop for a large one): see routes.upload_coupons.
                    call.idempotency = idem
                    return await answer_keyed(services, handler, call, {"body": raw}, status, media_type)
                result = await handler(call, body=raw)
            finally:
                services.uploads -= 1
            return encode(result, status, media_type)

        chosen = large_endpoint if large else endpoint
        chosen.__name__ = handler.__name__
        return chosen


async def answer_keyed(
    services: Services, handler: Handler, call: Call, inputs: dict[str, Any], status: int, media_type: str
) -> Response:
    """The handler's answer to a request with an Idempotency-Key (the store's keyed wrapper
    around the whole handler): a replayed one says so."""
    try:
        outcome = await services.store.keyed(call.idempotency, handler(call, **inputs))
    except CouponError as error:
        if error.replayed:
            error.headers[REPLAYED_HEADER] = "true"
        raise
    response = encode(outcome.value, status, media_type)
    if outcome.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response


def encode(result: Any, status: int, media_type: str) -> Response:
    if isinstance(result, BaseModel):
        content = result.model_dump_json().encode()
    elif isinstance(result, bytes):
        content = result
    else:
        content = orjson.dumps(result, default=_model_fields, option=orjson.OPT_UTC_Z)
    return Response(content, status_code=status, media_type=media_type)


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


def idempotency_of(request: Request, keys: Keys, ttl_ms: int) -> Idempotency | None:
    """The request's Idempotency-Key, validated, or None; its body is identified next."""
    scope = request.scope
    given = [value for name, value in scope["headers"] if name == b"idempotency-key"]
    if not given:
        return None
    if len(given) > 1:
        raise invalid_fields([field_error(("header", keyed.HEADER), "send it once")], 1)
    key = given[0]
    if not keyed.KEY.fullmatch(key):
        problem = "must be 1-255 visible ASCII characters (0x21-0x7E)"
        raise invalid_fields([field_error(("header", keyed.HEADER), problem)], 1)
    digest = hashlib.sha256(key).hexdigest()[:32]
    request_line = f"{scope['method']} {scope['path']}\n".encode()  # request.url costs µs to build
    record = keys.idempotency(scope.get(keyed.KEY_ID, keyed.OPEN_SCOPE), digest)
    return Idempotency(record, "", ttl_ms, request_line)
