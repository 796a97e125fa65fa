"""Reading a request body: its media type, its size limit, and a deadline for it to arrive."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request

from .. import errors

SMALL_BODY_BYTES = 64 * 1024  # the most any body but an upload's may hold


class BodyDeadlines:
    """Ends the body reads that take longer than ``seconds``, with 408 request_timeout.

    uvicorn has no timeout of its own for a body: a client that sends headers and then
    nothing (or a trickle) would hold a task and its memory forever. One sweep a quarter
    of ``seconds`` apart serves every request, so a read ends between ``seconds`` and
    1.25 x ``seconds`` after it started; a timer per request (asyncio.timeout) costs about
    5 us of CPU each, a few percent of an allocation's, where this costs a dict entry.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._reading: dict[asyncio.Task[Any], float] = {}  # task -> its deadline
        self._expired: set[asyncio.Task[Any]] = set()  # cancelled here, not yet told
        self._loop: asyncio.AbstractEventLoop | None = None  # the sweep's

    async def sweep(self) -> None:
        """Cancel each read past its deadline, until cancelled itself."""
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(self.seconds / 4)
                now = time.monotonic()
                for task, deadline in list(self._reading.items()):
                    if deadline <= now and task not in self._expired:
                        self._expired.add(task)
                        task.cancel()
        finally:
            self._loop = None

    async def read(self, request: Request, limit: int) -> bytes:
        """The whole body; BodyTooLarge past ``limit`` bytes, RequestTimeout past the deadline."""
        # With its loop named, current_task() skips get_running_loop(), which on Python 3.11
        # makes a getpid() system call (a fork check) every time.
        task = asyncio.current_task(self._loop) or asyncio.current_task()  # no sweep: any loop
        assert task is not None
        cancelling = task.cancelling()
        self._reading[task] = time.monotonic() + self.seconds
        chunks = []
        size = 0
        receive = request.receive
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    # Not a server error: no traceback, no 500 in the log, nothing to answer.
                    raise errors.ClientDisconnected("the client closed the connection before its whole body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise errors.BodyTooLarge(f"this body may hold at most {limit} bytes", limit=limit)
                chunks.append(chunk)
                if not message.get("more_body"):
                    return b"".join(chunks)
        except asyncio.CancelledError:
            # A read is only ever suspended in receive(), so the cancellation of a sweep
            # arrives here, never later in the request.
            # As asyncio.timeout does: a cancellation from elsewhere as well (shutdown) wins.
            if task not in self._expired or task.uncancel() > cancelling:
                raise
            raise errors.RequestTimeout(f"the body did not arrive within {self.seconds:g} s") from None
        finally:
            del self._reading[task]
            self._expired.discard(task)


async def read_json(
    deadlines: BodyDeadlines,
    request: Request,
    content_type: bytes | None,
    content_length: bytes | None,
    limit: int = SMALL_BODY_BYTES,
) -> bytes:
    """The body of a JSON request, given its Content-Type and Content-Length headers (the
    first of each, raw); UnsupportedMediaType, or BodyTooLarge past ``limit`` bytes.

    A declared Content-Length over the limit is refused before any of the body is read; a
    body sent without one (chunked) is refused as soon as it passes the limit.
    """
    if content_type != b"application/json":  # else parsed: parameters, case, +json
        media_type = content_type.decode("latin-1").split(";")[0].strip().lower() if content_type else ""
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise errors.UnsupportedMediaType("send the body as application/json")
    if content_length is not None:
        if not content_length.isdigit():  # bytes: ASCII digits only
            raise errors.BadContentLength("Content-Length must be a number of bytes")
        if int(content_length) > limit:
            raise errors.BodyTooLarge(f"this body may hold at most {limit} bytes", limit=limit)
    return await deadlines.read(request, limit)
