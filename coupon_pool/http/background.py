"""Work an app process does on its own, beside the requests: the periodic purge, settling
due holds and starts, the batches' jobs, trimming the feeds, checking the pool-low thresholds,
and dropping the MEGADEAL waiters of processes that are gone."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import suppress

from redis.exceptions import RedisError, ResponseError

from ..models import CouponType
from ..pool.connection import process_name
from ..pool.levels import Threshold
from ..pool.megadeal import FORGET_INTERVAL_S, MegadealGate
from ..pool.store import Store
from .middleware import JsonLines

log = logging.getLogger("coupon_pool")


async def purge_periodically(store: Store, interval_s: float, lines: JsonLines, stop: asyncio.Event) -> None:
    """Every ``interval_s``, purge expired coupons if this loop holds the purge lock: it takes
    it when it is free and renews it while it holds it, so one process purges every interval.

    Ends when ``stop`` is set.
    """
    owner = f"{process_name()}/{uuid.uuid4().hex[:8]}"  # the lock's value: who holds it
    async for _ in every(interval_s, stop):
        try:
            if not await store.try_purge_lock(interval_s, owner):
                continue
            result = await store.purge()
        except RedisError as exc:
            lines.write(level="warning", event="purge", error=repr(exc))
            continue
        lines.write(level="info", event="purge", **result.model_dump(mode="json"))


async def settle_periodically(store: Store, interval_s: float, lines: JsonLines, stop: asyncio.Event) -> None:
    """Every ``interval_s``, carry out the holds past their deadline and the starts that came
    (store.settle: a bounded batch per call, until none is due). Every process does: a
    timer settled is gone from the set, so two processes never settle one twice. Allocations,
    stats and the purge settle what they meet, so this only keeps the pool tidy between them."""
    if interval_s <= 0:
        return
    async for _ in every(interval_s, stop):
        try:
            settled = await store.settle()
        except RedisError as exc:
            lines.write(level="warning", event="settle", error=repr(exc))
            continue
        if settled:
            lines.write(level="info", event="settle", settled=settled)


async def run_jobs_periodically(
    store: Store, interval_s: float, lines: JsonLines, stop: asyncio.Event
) -> None:
    """Every ``interval_s``, run the batches' jobs that no process holds (new ones, or those
    of a process that died: their lease ran out), each to its end (batches.py)."""
    if interval_s <= 0:
        return
    async for _ in every(interval_s, stop):
        try:
            ran = await store.batches.run_jobs()
        except RedisError as exc:
            lines.write(level="warning", event="jobs", error=repr(exc))
            continue
        if ran:
            lines.write(level="info", event="jobs", ran=ran)


async def trim_feeds_periodically(
    store: Store, interval_s: float, lines: JsonLines, stop: asyncio.Event
) -> None:
    """Every ``interval_s``, learn which consumer groups read the trail (the writes' audit cap
    follows) and trim each audit stream to what they need (feeds.py). Entries dropped past
    FEED_MAX_LEN though a group needed them are logged at error level, every time."""
    if interval_s <= 0:
        return
    async for _ in every(interval_s, stop):
        try:
            if not await store.feeds.refresh():
                continue
            trimmed = await store.feeds.trim()
        except RedisError as exc:
            lines.write(level="warning", event="feed_trim", error=repr(exc))
            continue
        for t in trimmed:
            if t.dropped:
                lines.write(
                    level="error", event="feed_dropped", stream=t.stream, dropped=t.dropped,
                    groups=t.lost_by, reason="FEED_MAX_LEN reached: entries a group needed were dropped",
                )  # fmt: skip


async def check_levels_periodically(
    store: Store,
    thresholds: Mapping[CouponType, Threshold],
    interval_s: float,
    lines: JsonLines,
    stop: asyncio.Event,
) -> None:
    """Every ``interval_s``, check the types' available counts against their pool-low
    thresholds (levels.py). Every process may: the function records a crossing once, whoever
    sees it first, and logs it here (``pool_low`` at warning level)."""
    if not thresholds:
        return
    async for _ in every(interval_s, stop):
        try:
            crossed = await store.levels.check(thresholds)
        except RedisError as exc:
            lines.write(level="warning", event="pool_level", error=repr(exc))
            continue
        for c in crossed:
            level = "warning" if c.op == "pool_low" else "info"
            lines.write(level=level, event=c.op, type=c.type.value, threshold=str(thresholds[c.type]))


async def forget_dead_waiters_periodically(gate: MegadealGate, stop: asyncio.Event) -> None:
    """Every second, drop the queued MEGADEAL waiters of processes that are gone."""
    async for _ in every(FORGET_INTERVAL_S, stop):
        try:
            await gate.forget_dead_waiters()
        except ResponseError as exc:  # CLIENT LIST not allowed (an ACL, a managed Redis)
            log.warning("cannot tell dead processes' MEGADEAL waiters (%s): they keep their places", exc)
        except RedisError as exc:
            log.warning("could not look for dead processes' MEGADEAL waiters: %s", exc)


async def every(interval_s: float, stop: asyncio.Event) -> AsyncIterator[None]:
    """Yield every ``interval_s`` until ``stop`` is set (checked before each turn).

    Cancelling alone is not enough on Python 3.11: redis-py's calls go through
    asyncio.wait_for, which can swallow a cancellation that arrives as the call
    completes, and a loop would go on forever, holding up the shutdown.
    """
    while not stop.is_set():
        with suppress(TimeoutError):
            async with asyncio.timeout(interval_s):
                await stop.wait()
        if stop.is_set():
            return
        yield
