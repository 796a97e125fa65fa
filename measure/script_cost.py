"""Redis time per allocation function, against the ceiling's INCR function, from INFO commandstats.

    python measure/script_cost.py [N] [REDIS_URL]     (defaults: 20000, redis://127.0.0.1:6390/0)

Uploads 50 STANDARD coupons of 10,000,000 usages into a namespace of its own
(script-cost), then makes N allocations to new users through Store.allocate, 100 at a
time (auto-pipelined, as under load), and N runs of the ceiling's function, each after
CONFIG RESETSTAT: the figure is Redis's own time per FCALL (usec_per_call), without the
network (with the AOF as the server has it: measure/redis_cost.py starts its own Redis with
redis.conf's). It resets the server's command statistics; the namespace is deleted after.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from coupon_pool.models import CouponIn, CouponType, FlatDiscount
from coupon_pool.pool.autopipeline import AutoPipeline
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from coupon_pool.tools.bench.reference import FUNCTION, LIBRARY

NAMESPACE = "script-cost"
AT_ONCE = 100


async def usec_per_fcall(redis: Redis) -> float:
    stats = await redis.info("commandstats")
    return float(stats["cmdstat_fcall"]["usec_per_call"])


async def main(count: int, url: str) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    store = Store(redis, Keys(NAMESPACE))
    await store.prepare()
    expires = datetime.now(UTC) + timedelta(days=30)
    await store.upload(
        [
            CouponIn.model_construct(
                code=f"COST-{i}",
                type=CouponType.STANDARD,
                discount=FlatDiscount.model_construct(kind="flat", value="1.50"),
                expires_at=expires,
                max_usages=10_000_000,
            )
            for i in range(50)
        ]
    )
    await redis.function_load(LIBRARY, replace=True)
    pipeline = AutoPipeline(redis)
    counter = f"{{{NAMESPACE}}}:n"
    try:
        await redis.config_resetstat()
        for start in range(0, count, AT_ONCE):
            users = range(start, min(start + AT_ONCE, count))
            await asyncio.gather(*(store.allocate(f"cost-{u}", CouponType.STANDARD) for u in users))
        allocate_us = await usec_per_fcall(redis)
        await redis.config_resetstat()
        for start in range(0, count, AT_ONCE):
            calls = min(AT_ONCE, count - start)
            await asyncio.gather(*(pipeline.run(FUNCTION.encode(), [counter], []) for _ in range(calls)))
        incr_us = await usec_per_fcall(redis)
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{{{NAMESPACE}}}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await redis.delete(*keys[start : start + 1000])
        await redis.aclose()
    print(f"allocation function: {allocate_us:.2f} us per call in Redis; ceiling INCR: {incr_us:.2f} us")


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(
        main(int(args[0]) if args else 20_000, args[1] if len(args) > 1 else "redis://127.0.0.1:6390/0")
    )
