"""Redis bytes per stored coupon: upload N coupons into a fresh namespace, read INFO memory.

    python measure/memory_per_coupon.py [N] [REDIS_URL]     (defaults: 1000000, redis://127.0.0.1:6390/0)

Coupons are written with Store.upload (what the service runs), a third of each type,
with codes like the bundled generator's ("MEM-0000001"). The namespace (memory-probe) is
deleted afterwards.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from coupon_pool.models import CouponIn, CouponType, PercentDiscount
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store

BATCH = 50_000


async def used_memory(redis: Redis) -> int:
    await redis.execute_command("MEMORY", "PURGE")
    return int((await redis.info("memory"))["used_memory"])


async def main(count: int, url: str) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    store = Store(redis, Keys("memory-probe"), upload_chunk_size=1000, audit_max_len=1)
    expires = datetime.now(UTC) + timedelta(days=30)
    types = list(CouponType)
    before = await used_memory(redis)
    for start in range(0, count, BATCH):
        await store.upload(
            [
                CouponIn.model_construct(
                    code=f"MEM-{i:07d}",
                    type=types[i % 3],
                    discount=PercentDiscount.model_construct(kind="percent", value=15),
                    expires_at=expires,
                    max_usages=1,
                )
                for i in range(start, min(start + BATCH, count))
            ]
        )
    after = await used_memory(redis)
    print(f"{count:,} coupons: {(after - before) / 2**20:.1f} MiB, {(after - before) / count:.0f} bytes each")
    for key in ("{memory-probe}:c:MEM-0000001", "{memory-probe}:avail:FREE"):
        print(f"  {key}: {await redis.object('encoding', key)}, {await redis.memory_usage(key)} bytes")
    async for key in redis.scan_iter(match="{memory-probe}:*", count=10_000):
        await redis.unlink(key)
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000,
                     sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6390/0"))  # fmt: skip
