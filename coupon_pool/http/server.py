"""The HTTP server: uvicorn with httptools, and the connection limits uvicorn lacks.

uvicorn with httptools bounds neither how long a request's headers may take nor how
large they may be, lets a connection that never sends a byte stay open forever, answers
a malformed request with text/plain, and has no cap on open connections (its
``limit_concurrency`` answers text/plain 503 only once headers are in). ``GuardedProtocol``
adds, per connection:

- an idle limit: a connection with no request under way is closed after KEEP_ALIVE_S
  (uvicorn's own keep-alive timer covers the time after a response; this covers a new
  connection too);
- a header deadline: once the first byte of a request is in, its headers must be
  complete within HEADER_TIMEOUT_S, or it gets 408 and the connection closes (the body
  then has BODY_TIMEOUT_S, enforced by the app);
- a header size cap: past MAX_HEADER_BYTES (request line included) before the headers
  end, 431, and the connection closes; at most one read (64 KiB) more is ever buffered;
- a connection cap: beyond MAX_CONNECTIONS open in this process, a new connection gets
  503 with Retry-After and is closed, rather than the process running out of descriptors;
- framing errors as problem+json: a bad Content-Length (not a number, negative, given
  twice, or beside Transfer-Encoding) is 400 ``invalid_content_length``, any other
  unparsable request 400 ``invalid_http``; then the connection closes.

Every such answer carries an X-Request-ID and writes a log line, as the app's do.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .. import errors
from .middleware import JsonLines, new_request_id
from .problems import MEDIA_TYPE, problem_body

_lines = JsonLines()
MAX_HEADERS = 100  # each costs a Python call as it is parsed: 5,000 took 10 ms of the loop


class _Oversized(Exception):
    """Raised in a parser callback to stop parsing headers past the caps."""


@dataclass(frozen=True)
class ConnectionLimits:
    keep_alive_s: float = 5.0
    header_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024
    max_connections: int = 4096


class _Sweep:
    """One timer for all of a process's connections: a deadline is a dict entry, and a
    sweep a quarter of the shorter limit apart ends those past theirs (a deadline then
    ends up to 1.25 x late). A timer per request would cost about a microsecond each."""

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self.loop = loop
        self.period = period
        self.deadlines: dict[GuardedProtocol, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, connection: GuardedProtocol, seconds: float) -> None:
        self.deadlines[connection] = self.loop.time() + seconds
        if self._timer is None:
            self._timer = self.loop.call_later(self.period, self._run)

    def _run(self) -> None:
        now = self.loop.time()
        for connection, deadline in list(self.deadlines.items()):
            if deadline <= now:
                del self.deadlines[connection]
                connection.expired()
        self._timer = self.loop.call_later(self.period, self._run) if self.deadlines else None


_sweeps: dict[asyncio.AbstractEventLoop, _Sweep] = {}


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._max_header_bytes = limits.max_header_bytes
        self._awaiting_headers = True  # no request under way, or one whose headers are not all in
        self._header_bytes = 0  # bytes received since the request began, while awaiting headers
        self._parsed_bytes = 0  # its request line and headers as parsed so far
        self._parsed_headers = 0
        self._oversized = False
        sweep = _sweeps.get(self.loop)
        if sweep is None:
            period = min(limits.keep_alive_s, limits.header_timeout_s) / 4
            sweep = _sweeps[self.loop] = _Sweep(self.loop, period)
        self._sweep = sweep

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            detail = f"this process serves at most {self.limits.max_connections} connections at once"
            self._refuse(errors.TooManyConnections(detail, headers={"Retry-After": "1"}))
            return
        self._sweep.watch(self, self.limits.keep_alive_s)  # until its first byte

    def connection_lost(self, exc: Exception | None) -> None:
        self._sweep.deadlines.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._awaiting_headers:
            if self._header_bytes == 0:  # the first byte of a request: its headers' clock starts
                self._sweep.watch(self, self.limits.header_timeout_s)
            self._header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(errors.InvalidHttp("protocol upgrades are not served"))
            return
        except httptools.HttpParserError as exc:
            if self._oversized:
                self._refuse(errors.HeadersTooLarge(self._too_large()))
            elif "Content-Length" in str(exc) or "Transfer-Encoding" in str(exc):
                self._refuse(errors.BadContentLength(f"the request's framing is invalid: {exc}"))
            else:
                self._refuse(errors.InvalidHttp(f"the request cannot be parsed: {exc}"))
            return
        if self._awaiting_headers and self._header_bytes > self._max_header_bytes:
            self._refuse(errors.HeadersTooLarge(self._too_large()))

    def _too_large(self) -> str:
        limit = self._max_header_bytes
        return f"a request may have at most {MAX_HEADERS} headers, of at most {limit} bytes in all"

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        self._parsed_bytes = self._parsed_headers = 0

    # uvicorn's own on_url and on_header, counting what a request's headers hold as they
    # are parsed (headers that arrive whole in one read are seen only here).
    def on_url(self, url: bytes) -> None:
        self.url += url
        self._parsed_bytes += len(url)
        if self._parsed_bytes > self._max_header_bytes:
            self._oversized = True
            raise _Oversized  # httptools stops parsing this read at once

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_bytes += len(name) + len(value) + 4
        self._parsed_headers += 1
        if self._parsed_bytes > self._max_header_bytes or self._parsed_headers > MAX_HEADERS:
            self._oversized = True
            raise _Oversized
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._header_bytes = 0
        self._sweep.deadlines.pop(self, None)
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.pipeline:
            self._awaiting_headers = True  # uvicorn's keep-alive timer now runs

    def expired(self) -> None:
        """Past the deadline: idle (no byte of a request yet), or its headers are late."""
        if self.transport.is_closing():
            return
        if self._header_bytes == 0:
            self.transport.close()
        elif self._awaiting_headers:
            seconds = self.limits.header_timeout_s
            self._refuse(errors.RequestTimeout(f"the request's headers did not arrive within {seconds:g} s"))

    def _refuse(self, error: errors.CouponError) -> None:
        """Answer ``error`` as problem+json, log it, and close the connection."""
        self._sweep.deadlines.pop(self, None)
        request_id = new_request_id()
        body = problem_body(error)
        headers = {"content-type": MEDIA_TYPE, "content-length": str(len(body)),
                   "connection": "close", "x-request-id": request_id, **error.headers}  # fmt: skip
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
        self.transport.write(STATUS_LINE[error.status] + head + b"\r\n" + body)
        self.transport.close()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else None
        _lines.write(
            level="warning", request_id=request_id, status=error.status, error=error.code, client=client
        )


def protocol(limits: ConnectionLimits) -> Any:
    """The protocol class for uvicorn's ``http`` option, bound to ``limits`` (picklable)."""
    return functools.partial(GuardedProtocol, limits=limits)
