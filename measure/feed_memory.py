"""Redis bytes per audit entry, for sizing FEED_MAX_LEN: allocate N usages through the store
(what the service runs), every entry kept (a consumer group that reads nothing), then read the
stream's MEMORY USAGE.

    python measure/feed_memory.py [N]     (default 200000; a redis-server of its own)

User ids are "user-00000001" (13 characters) and codes "FEED-0000001" (12), so an entry is
{op=allocate, type=STANDARD, user_id, code}; longer ids cost their extra bytes.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # support/, when run as a file
from coupon_pool.models import CouponType
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from support.factories import coupon
from support.redis_server import RedisServer


async def measure(url: str, count: int) -> dict[str, Any]:
    redis = Redis.from_url(url, decode_responses=True)
    store = Store(redis, Keys("feed-memory"), upload_chunk_size=1000, audit_max_len=10)
    await store.prepare()
    await store.upload([coupon(f"FEED-{i:07d}", max_usages=1000) for i in range(count // 1000 + 1)])
    await store.feeds.create("idle", "now", "events")
    before = await redis.xlen(store.keys.audit)
    for start in range(0, count, 500):
        await asyncio.gather(
            *(store.allocate(f"user-{i:08d}", CouponType.STANDARD) for i in range(start, start + 500))
        )
    entries = await redis.xlen(store.keys.audit) - before
    used = await redis.memory_usage(store.keys.audit, samples=0)
    await redis.aclose()
    return {"entries": entries, "stream_bytes": used, "bytes_per_entry": round(used / entries, 1)}


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    data = Path(tempfile.mkdtemp(prefix="feed-memory-"))
    server = RedisServer(data).start()
    try:
        print(asyncio.run(measure(server.url, count)))
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
