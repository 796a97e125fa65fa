"""Per-request telemetry: a request id, one JSON log line, and the request metrics."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import RequestMetrics

_log = logging.getLogger("coupon_pool")
LOG_FIELDS = "coupon_pool.log"  # the scope key handlers add operation fields under
STARTED = "coupon_pool.started"  # the scope key of the request's arrival (time.perf_counter)
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_ID_PREFIX = uuid.uuid4().hex[:16]  # random per process: ids stay unique across processes
_sequence = itertools.count(1)


def _new_id_prefix() -> None:
    global _ID_PREFIX, _sequence
    _ID_PREFIX, _sequence = uuid.uuid4().hex[:16], itertools.count(1)


os.register_at_fork(after_in_child=_new_id_prefix)


def note(request: Request, **fields: Any) -> None:
    """Add fields about the operation to this request's log line (not the line's own keys)."""
    request.scope.setdefault(LOG_FIELDS, {}).update(fields)


class JsonLines:
    """JSON log lines on stdout, each starting with the time (RFC 3339 UTC, milliseconds).

    The lines of one event-loop turn go out in one write at the end of that turn: a busy
    server makes one system call per turn, not one per request, and no line waits longer.
    """

    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._second = (0, "1970-01-01T00:00:00")

    def write(self, **fields: Any) -> None:
        self.emit({"time": self.now(), **fields})

    def emit(self, line: dict[str, Any]) -> None:
        """Write ``line``, whose first key is "time" (``now()``)."""
        self._pending.append(orjson.dumps(line))
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no event loop running: write at once
                self.flush()

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int((now - second) * 1000):03d}Z"

    def flush(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            lines.append(b"")
            sys.stdout.flush()  # anything printed as text goes first
            out = sys.stdout.buffer  # bytes as orjson made them: no decode and encode again
            out.write(b"\n".join(lines))
            out.flush()


class RequestTelemetry:
    """Pure ASGI middleware, so it adds no task or body copy to a request.

    It also answers an unexpected exception itself, with ``on_error``'s response: inside
    it, so that answer carries the request id and its log line like any other, and the
    exception goes no further (Starlette's outermost handler would answer too, then
    re-raise, and the server would drop the keep-alive connection).
    """

    def __init__(
        self, app: ASGIApp, metrics: RequestMetrics, log: JsonLines, on_error: Callable[[Exception], Response]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log = log
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = scope[STARTED] = time.perf_counter()
        request_id = _request_id(scope)
        fields: dict[str, Any] = {}
        scope[LOG_FIELDS] = fields
        status = 500
        id_header = (b"x-request-id", request_id.encode())

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:  # half an answer is out: nothing to do but let the server close
                raise
            _log.exception(
                "unhandled error on %s %s (request %s)", scope["method"], scope["path"], request_id
            )
            fields["error"] = "internal_error"
            await self.on_error(exc)(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            route = scope.get("route")
            method = scope["method"]
            self.metrics.observe(method, route.path if route else "unmatched", status, seconds)
            line = {
                "time": self.log.now(),
                "level": "error" if status >= 500 else "info",
                "request_id": request_id,
                "method": method,
                "path": scope["path"],
                "status": status,
                "latency_ms": round(seconds * 1000, 3),
            }
            line.update(fields)  # the operation's own: never one of the keys above (see note)
            self.log.emit(line)


def _request_id(scope: Scope) -> str:
    """The caller's X-Request-ID if usable, else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
            return str(value.decode())
    return new_request_id()


def new_request_id() -> str:
    """This process's random prefix and a sequence number."""
    return f"{_ID_PREFIX}-{next(_sequence)}"
