"""Redis bytes per stored coupon, plain and with a start or metadata: upload N coupons of each
kind into a fresh namespace, read INFO memory.

    python measure/memory_per_coupon.py [N] [REDIS_URL]     (defaults: 1000000, a redis-server of its own)

Without REDIS_URL it starts a redis-server of its own with redis.conf (support/redis_server.py)
on a free port and stops it afterwards. Coupons are written with Store.upload (what the
service runs), a third of each type, with codes like the bundled generator's
("MEM-0000001"), one kind after the other, in one namespace (memory-probe) emptied
before the next:
- plain: no start, no metadata;
- scheduled: a start a day ahead (field `st`; a member of its type's timers instead of its
  available set);
- short metadata: {"campaign": "spring-26"} (field `md`, 25 bytes: the hash stays a listpack);
- metadata 5x20: 5 keys, each key and each value 20 characters (`md` 231 bytes: within
  redis.conf's hash-max-listpack-value of 512; past Redis's default of 64, where the hash
  becomes a hash table).
Prints bytes per coupon, and one coupon hash's encoding and MEMORY USAGE, for each.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # support/, when run as a file
from coupon_pool.models import CouponIn, CouponType, PercentDiscount
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from support.redis_server import RedisServer

BATCH = 50_000
Extra = Callable[[int], tuple[datetime | None, dict[str, str] | None]]  # coupon number -> starts_at, metadata


def metadata_5x20(i: int) -> dict[str, str]:
    return {f"campaign-field-{j:05d}": f"value-{i:07d}-{j:06d}" for j in range(5)}


TOMORROW = datetime.now(UTC) + timedelta(days=1)

KINDS: dict[str, Extra] = {
    "plain": lambda i: (None, None),
    "scheduled": lambda i: (TOMORROW, None),
    "short metadata": lambda i: (None, {"campaign": "spring-26"}),
    "metadata 5x20": lambda i: (None, metadata_5x20(i)),
}


async def used_memory(redis: Redis) -> int:
    await redis.execute_command("MEMORY", "PURGE")
    return int((await redis.info("memory"))["used_memory"])


async def measure(redis: Redis, kind: str, extra: Extra, count: int) -> None:
    keys = Keys("memory-probe")  # one name for every kind: a longer key name costs bytes too
    store = Store(redis, keys, upload_chunk_size=1000, audit_max_len=1)
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
                    starts_at=starts_at,
                    metadata=metadata,
                )
                for i in range(start, min(start + BATCH, count))
                for starts_at, metadata in [extra(i)]
            ]
        )
    after = await used_memory(redis)
    one = keys.coupon("MEM-0000001")
    grown = after - before
    print(f"{kind}: {count:,} coupons, {grown / 2**20:.1f} MiB, {grown / count:.0f} bytes each; "
          f"{one}: {await redis.object('encoding', one)}, {await redis.memory_usage(one)} bytes")  # fmt: skip
    async for key in redis.scan_iter(match=keys.tag + ":*", count=10_000):
        await redis.unlink(key)


async def main(count: int, url: str) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    try:
        for kind, extra in KINDS.items():
            await measure(redis, kind, extra, count)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    if len(sys.argv) > 2:
        asyncio.run(main(count, sys.argv[2]))
    else:
        data = Path(tempfile.mkdtemp(prefix="memory-per-coupon-"))
        server = RedisServer(data).start()
        try:
            print(f"redis-server {server.url} (redis.conf), data in {data}")
            asyncio.run(main(count, server.url))
        finally:
            server.stop()
            shutil.rmtree(data, ignore_errors=True)
