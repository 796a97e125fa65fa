"""A minimal HTTP/1.1 keep-alive client: one request at a time per connection, little parsing.

httpx or aiohttp spend more CPU per request than the service under test on a small
machine; this client sends prepared bytes and reads status, Content-Length and body only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import urlsplit


class HttpError(Exception):
    """The connection broke or the server answered something this client cannot read."""


class Target:
    """Where to send requests, and request bytes built once for it."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        """``api_key`` goes into every request as ``Authorization: Bearer <key>``."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"need an http:// URL, not {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.base_path = parts.path.rstrip("/")
        self._host_header = f"{self.host}:{self.port}".encode()
        self._auth = [f"Authorization: Bearer {api_key}".encode()] if api_key else []

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Sequence[bytes] = ()
    ) -> bytes:
        lines = [
            f"{method} {self.base_path}{path} HTTP/1.1".encode(),
            b"Host: " + self._host_header,
            *self._auth,
            *headers,
        ]
        if body is not None:
            lines += [b"Content-Type: application/json", b"Content-Length: " + str(len(body)).encode()]
        return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")

    async def connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(Connection, self.host, self.port)
        return protocol


class Connection(asyncio.Protocol):
    """One keep-alive connection; ``send`` answers (status, body)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._head_end = -1
        self._status = 0
        self._length = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport (uvloop's is no subclass)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._waiter and not self._waiter.done():
            self._waiter.set_exception(HttpError(f"connection closed: {exc or 'by the server'}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._head_end < 0:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            try:
                self._status, self._length = _parse_head(bytes(self._buffer[:end]))
            except ValueError as exc:
                waiter.set_exception(HttpError(str(exc)))
                return
            self._head_end = end + 4
        stop = self._head_end + self._length
        if len(self._buffer) >= stop:
            body = bytes(self._buffer[self._head_end : stop])
            del self._buffer[:stop]
            self._head_end = -1
            waiter.set_result((self._status, body))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        if self.transport is None:
            raise HttpError("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _parse_head(head: bytes) -> tuple[int, int]:
    """Status code and Content-Length of a response head."""
    status_line, _, headers = head.partition(b"\r\n")
    if not status_line.startswith(b"HTTP/1.1 "):
        raise ValueError(f"not an HTTP/1.1 response: {status_line[:40]!r}")
    length = None
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise ValueError("chunked responses are not supported")
    if length is None:
        raise ValueError("the response has no Content-Length")
    return int(status_line[9:12]), length


class BenchError(Exception):
    """The bench cannot go on (service down, preparation refused)."""


async def expect(target: Target, request: bytes, status: int) -> bytes:
    """Send one request on a connection of its own; insist on ``status``."""
    try:
        conn = await target.connect()
    except OSError as exc:
        raise BenchError(f"cannot reach {target.host}:{target.port}: {exc}") from None
    try:
        got, answer = await conn.send(request)
    except HttpError as exc:
        raise BenchError(str(exc)) from None
    finally:
        conn.close()
    if got != status:
        raise BenchError(f"expected {status}, got {got}: {answer[:300]!r}")
    return answer
