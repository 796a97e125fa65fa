"""Per-request telemetry: a request id, one JSON log line, and the request metrics."""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import RequestMetrics

LOG_FIELDS = "coupon_pool.log"  # the scope key handlers add operation fields under
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")


def note(request: Request, **fields: Any) -> None:
    """Add fields about the operation to this request's log line."""
    request.scope.setdefault(LOG_FIELDS, {}).update(fields)


def log_line(**fields: Any) -> str:
    """One JSON log line: the time (RFC 3339 UTC, milliseconds), then ``fields`` in order."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return orjson.dumps({"time": now, **fields}).decode()


class _Stdout(logging.Handler):
    """Writes each record to the current sys.stdout, one line each."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stdout.write(record.getMessage() + "\n")
        sys.stdout.flush()


def access_logger() -> logging.Logger:
    logger = logging.getLogger("coupon_pool.access")
    if not logger.handlers:
        logger.addHandler(_Stdout())
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class RequestTelemetry:
    """Pure ASGI middleware, so it adds no task or body copy to a request."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics, logger: logging.Logger) -> None:
        self.app = app
        self.metrics = metrics
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _request_id(scope)
        fields: dict[str, Any] = {}
        scope[LOG_FIELDS] = fields
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            route = scope.get("route")
            self.metrics.observe(scope["method"], route.path if route else "unmatched", status, seconds)
            line = {
                "level": "error" if status >= 500 else "info",
                "request_id": request_id,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "latency_ms": round(seconds * 1000, 3),
            }
            self.logger.info(log_line(**line, **{k: v for k, v in fields.items() if k not in line}))


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
            return str(value.decode())
    return uuid.uuid4().hex
