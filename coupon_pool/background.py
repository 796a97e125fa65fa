"""Work an app process does on its own, beside the requests: the periodic purge."""

from __future__ import annotations

import asyncio
from contextlib import suppress

from redis.exceptions import RedisError

from .middleware import JsonLines
from .store import Store


async def purge_periodically(store: Store, interval_s: float, lines: JsonLines, stop: asyncio.Event) -> None:
    """Every ``interval_s``, purge expired coupons if no other process claimed this round.

    Ends when ``stop`` is set. (Cancelling alone is not enough on Python 3.11: redis-py's
    calls go through asyncio.wait_for, which can swallow a cancellation that arrives as
    the call completes, and the loop would go on forever, holding up the shutdown.)
    """
    while not stop.is_set():
        with suppress(TimeoutError):
            async with asyncio.timeout(interval_s):
                await stop.wait()
        if stop.is_set():
            return
        try:
            if not await store.try_purge_lock(interval_s):
                continue
            result = await store.purge()
        except RedisError as exc:
            lines.write(level="warning", event="purge", error=repr(exc))
            continue
        lines.write(level="info", event="purge", **result.model_dump(mode="json"))
