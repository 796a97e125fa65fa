"""An operation's endpoint: one pure ASGI app that checks, reads, runs and answers a request.

It does for its operation what Starlette's ``request_response``, ``Request`` and
``Response`` would, in fewer steps: the headers it needs are read from the raw list in one
pass, the body within its deadline, and the answer goes out as two messages with its
header list built once. The bytes are those a Starlette ``Response`` would send
(content-length, then content-type, then any others), and its errors answer through the
same handlers, picked the same way (problems.EXCEPTION_HANDLERS, by the exception's class),
as Starlette's exception middleware would.

A handler that answers a ``Stream`` (an export) has it sent chunk by chunk instead, with
no Content-Length (chunked transfer coding), each chunk once the server has taken the one
before, so the process holds about one chunk whatever the answer's size.

The routes with a fixed path (the hot ones among them) reach it straight from the app's
``Shortcuts`` (app.py), without Starlette's router and its exception middleware; the
others through their Starlette ``Route``. Either way the same code answers.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from .. import errors
from ..errors import CouponError
from ..models import POOL_SLOTS, _Body
from ..pool.keyed import REPLAYED_HEADER
from .auth import ApiKeys
from .bodies import read_json
from .inputs import Call, Services, Stream, client_gone, encode, idempotency_of, parse_model, parse_query
from .lookups import budgeted
from .middleware import LOG_FIELDS
from .problems import handler_for
from .validation import validate_json

if TYPE_CHECKING:
    from .routing import Operation

_REPLAYED = (REPLAYED_HEADER.lower().encode(), b"true")


class Endpoint:
    """The ASGI app of ``op``: its inputs validated, its handler called, its answer encoded."""

    def __init__(self, op: Operation, services: Services, api_keys: ApiKeys) -> None:
        self.op = op
        self.services = services
        self.handler = op.handler if op.lookup is None else budgeted(op.handler, op.lookup, services)
        self.needs = op.role if api_keys.enabled else None  # None: no key checked
        self.api_keys = api_keys
        self.status = op.status
        self.content_type = _content_type(op.media_type)
        self.__name__ = op.handler.__name__

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            content, replayed = await self._run(request, scope)
        except Exception as error:  # answered as Starlette's exception middleware would
            handler = handler_for(error)
            if handler is None:
                raise  # unexpected: RequestTelemetry answers 500
            await (await handler(request, error))(scope, receive, send)
            return
        if isinstance(content, Stream):
            await self._stream(content, scope, receive, send)
            return
        headers = [(b"content-length", b"%d" % len(content)), (b"content-type", self.content_type)]
        if replayed:
            headers.append(_REPLAYED)
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _stream(self, stream: Stream, scope: Scope, receive: Receive, send: Send) -> None:
        """Send ``stream``'s chunks as they come (uvicorn's send waits while the connection's
        buffer is full); stop at once when the client has gone, and send none to a HEAD. An
        error midway ends the connection without the last chunk: the client sees an answer
        cut short, never a short one passing as whole."""
        headers = [(b"content-type", _content_type(stream.media_type))]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        gone = asyncio.ensure_future(client_gone(receive))
        try:
            async with aclosing(stream.chunks) as chunks:
                if scope["method"] != "HEAD":
                    async for chunk in chunks:
                        if gone.done():
                            return
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception:
            scope.setdefault(LOG_FIELDS, {})["error"] = "stream_cut_short"
            raise
        finally:
            gone.cancel()
        await send({"type": "http.response.body", "body": b""})

    async def _run(self, request: Request, scope: Scope) -> tuple[bytes | Stream, bool]:
        """The answer's body (or its Stream), and whether it is a replay (of an Idempotency-Key)."""
        op, services = self.op, self.services
        content_type = content_length = None
        authorization: list[bytes] = []
        idempotency_keys: list[bytes] = []
        for name, value in scope["headers"]:  # one pass; the first of a repeated header counts
            if name == b"content-type":
                if content_type is None:
                    content_type = value
            elif name == b"content-length":
                if content_length is None:
                    content_length = value
            elif name == b"authorization":
                authorization.append(value)
            elif name == b"idempotency-key":
                idempotency_keys.append(value)
        if self.needs is not None:
            self.api_keys.admit(request, authorization, self.needs)
        if op.large_body:
            return await self._run_large(request, content_type, content_length, idempotency_keys)
        inputs: dict[str, Any] = {}
        if op.body is not None:
            raw = await read_json(services.deadlines, request, content_type, content_length)
            inputs["body"] = validate_json(raw, op.body)
        if op.query is not None:
            # What a cursor may name depends on the pool: its slots.
            inputs["query"] = parse_query(request, op.query, {POOL_SLOTS: len(services.store.layout.slots)})
        if op.path_params is not None:
            inputs["path"] = parse_model(request.path_params, op.path_params)
        call = Call(request, services.store, services.gate)
        if idempotency_keys and op.idempotent:
            call.idempotency = idempotency_of(request, idempotency_keys, services)
            body: _Body = inputs["body"]
            call.idempotency.identify(body.fingerprint_json())
            return await self._keyed(call, inputs)
        if op.streams:
            stream: Stream = await self.handler(call, **inputs)
            return stream, False
        return encode(await self.handler(call, **inputs)), False

    async def _run_large(
        self, request: Request, content_type: bytes | None, content_length: bytes | None, keys: list[bytes]
    ) -> tuple[bytes, bool]:
        # Up to MAX_BODY_BYTES each, read whole and then validated and written: a bound on
        # how many at once bounds the memory they take. Refused before any byte is read.
        services = self.services
        if services.uploads >= services.max_uploads:
            raise errors.UploadsBusy(
                f"{services.uploads} uploads are under way in this process, the most it takes at once; "
                "send this one when one of them is done",
                headers={"Retry-After": "1"},
            )
        services.uploads += 1
        try:
            raw = await read_json(
                services.deadlines, request, content_type, content_length, services.max_body_bytes
            )
            call = Call(request, services.store, services.gate)
            if keys and self.op.idempotent:
                # The body is identified by its bytes, hashed where it is validated (off the
                # event loop for a large one): see routes.upload_coupons.
                call.idempotency = idempotency_of(request, keys, services)
                return await self._keyed(call, {"body": raw})
            return encode(await self.handler(call, body=raw)), False
        finally:
            services.uploads -= 1

    async def _keyed(self, call: Call, inputs: dict[str, Any]) -> tuple[bytes, bool]:
        """The answer to a request with an Idempotency-Key (the store's keyed wrapper around
        the whole handler): a replayed one says so, a refusal too."""
        assert call.idempotency is not None
        try:
            outcome = await self.services.store.keyed(call.idempotency, self.handler(call, **inputs))
        except CouponError as error:
            if error.replayed:
                error.headers[REPLAYED_HEADER] = "true"
            raise
        return encode(outcome.value), outcome.replayed


def _content_type(media_type: str) -> bytes:
    """The Content-Type Starlette's Response would send for ``media_type``."""
    if media_type.startswith("text/") and "charset=" not in media_type.lower():
        media_type += "; charset=utf-8"
    return media_type.encode("latin-1")
