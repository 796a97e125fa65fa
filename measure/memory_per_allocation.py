"""Redis bytes per allocation and per audit entry, for sizing maxmemory.

    python measure/memory_per_allocation.py [N] [REDIS_URL]     (defaults: 100000, redis://127.0.0.1:6390/0)

Uploads N single-use STANDARD coupons with an audit trail capped far above what the run
writes, then allocates each to its own user (user ids like "user-0000001", 12
characters), reading INFO memory after each step. An allocation adds one holder field to
its coupon hash and one audit entry; the audit entries are then trimmed away to tell the
two apart. Then the same again with holds (`hold_s` of an hour: the holder field carries the
deadline, and the hold is a member of its type's timers). Each namespace (memory-probe,
memory-probe-held) is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta

from memory_per_coupon import used_memory  # this folder: scripts are run as files
from redis.asyncio import Redis

from coupon_pool.models import CouponIn, CouponType, FlatDiscount
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store

BATCH = 1000


async def measure(redis: Redis, count: int, hold_s: int | None) -> None:
    keys = Keys("memory-probe" if hold_s is None else "memory-probe-held")
    store = Store(redis, keys, upload_chunk_size=1000, audit_max_len=10 * count)
    expires = datetime.now(UTC) + timedelta(days=30)
    discount = FlatDiscount.model_construct(kind="flat", value="5")
    coupons = [CouponIn.model_construct(code=f"MEM-{i:07d}", type=CouponType.STANDARD, discount=discount,
                                        expires_at=expires, max_usages=1) for i in range(count)]  # fmt: skip
    await store.upload(coupons)
    await redis.delete(keys.audit)
    before = await used_memory(redis)
    for start in range(0, count, BATCH):
        await asyncio.gather(*(store.allocate(f"user-{i:07d}", CouponType.STANDARD, hold_s)
                               for i in range(start, min(count, start + BATCH))))  # fmt: skip
    after = await used_memory(redis)
    entries = await redis.xlen(keys.audit)
    await redis.delete(keys.audit)
    without_audit = await used_memory(redis)
    what = "held allocations (holder field and timer" if hold_s else "allocations (holder field"
    print(f"{count} {what}): {(after - before) / count:.0f} bytes each with its audit entry; "
          f"without it {(without_audit - before) / count:.0f} bytes, "
          f"audit entry {(after - without_audit) / entries:.0f} bytes ({entries} entries)")  # fmt: skip
    async for key in redis.scan_iter(match=keys.tag + ":*", count=1000):
        await redis.unlink(key)


async def main(count: int, url: str) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    try:
        await measure(redis, count, None)
        await measure(redis, count, 3600)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000,
                     sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6390/0"))  # fmt: skip
