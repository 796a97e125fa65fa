"""Time a purge of N expired coupons, per function call, on a Redis of your choosing.

    python measure/purge_timing.py [N] [REDIS_URL]     (defaults: 50000, redis://127.0.0.1:6390/0)

It works in a key namespace of its own (purge-timing), so a pool in the same Redis is not
touched, and deletes that namespace's keys when done.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from coupon_pool.models import CouponIn, CouponType, FlatDiscount
from coupon_pool.pool.functions import PURGE, Function
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store


def expired(count: int) -> list[CouponIn]:
    """Coupons that expired a minute ago (the API refuses those; the store takes them)."""
    past = datetime.now(UTC) - timedelta(minutes=1)
    return [
        CouponIn.model_construct(
            code=f"PT-{i:07d}",
            type=list(CouponType)[i % 3],
            discount=FlatDiscount.model_construct(kind="flat", value="5"),
            expires_at=past,
            max_usages=1,
        )
        for i in range(count)
    ]


async def main(count: int, url: str) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    store = Store(redis, Keys("purge-timing"))
    calls: list[float] = []
    run = store.library.run

    async def timed(fn: Function, *args: Any, **named: Any) -> Any:
        start = time.perf_counter()
        try:
            return await run(fn, *args, **named)
        finally:
            if fn is PURGE:
                calls.append(time.perf_counter() - start)

    await store.upload(expired(count))
    store.library.run = timed  # type: ignore[method-assign]
    start = time.perf_counter()
    result = await store.purge()
    total = time.perf_counter() - start
    purged = sum(result.purged.values())
    print(f"purged {purged} coupons in {total * 1000:.0f} ms, {len(calls)} function calls:")
    print(f"  per call median {statistics.median(calls) * 1000:.2f} ms, max {max(calls) * 1000:.2f} ms")
    async for key in redis.scan_iter(match="{purge-timing}:*"):
        await redis.delete(key)
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000,
                     sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6390/0"))  # fmt: skip
