"""Take MEGADEAL slots and hold them until killed.

    python support/megadeal_holder.py REDIS_URL SLOTS LEASE_S [CAPACITY]

CAPACITY is the gate's limit of concurrent slots (default: SLOTS).
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import AsyncExitStack

from redis.asyncio import Redis

from coupon_pool.pool.keys import Keys
from coupon_pool.pool.megadeal import MegadealGate
from coupon_pool.settings import MegadealLimits


async def main(url: str, slots: int, lease_s: float, capacity: int) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    gate = MegadealGate(redis, Keys("cp"), MegadealLimits(max_concurrent=capacity, lease_s=lease_s))
    async with AsyncExitStack() as stack:
        for i in range(slots):
            await stack.enter_async_context(gate.slot(f"holder-{i}"))
        print("held", flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    slots = int(sys.argv[2])
    asyncio.run(
        main(sys.argv[1], slots, float(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else slots)
    )
