"""Following GET /v1/audit with `after=next` while writers allocate, on a sharded pool: every
entry returned exactly once? (issue 26's first check)

    python measure/audit_follow.py [--shards 16] [--writers 8] [--seconds 10]

Starts a redis-server and `coupon-pool serve` (POOL_SHARDS=--shards) of its own, uploads
coupons, takes the latest page's `next`, then follows the trail a page of 1,000 at a time
while --writers clients allocate for --seconds; then drains it. Prints, as JSON, the entries
the follower got, those written meanwhile (read from the streams themselves), the missing,
the duplicates and the extra ones: all three must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # support/, when run as a file
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from support.live_server import LiveServer
from support.redis_server import RedisServer


async def trail(redis: Redis, shards: int) -> set[str]:
    layout = Store(redis, Keys("cp"), shards=shards).layout
    ids: set[str] = set()
    for n, k in enumerate(layout.slots):
        entries: Any = await redis.xrange(k.audit)
        ids |= {f"{i}-{n}" for i, _ in entries}
    return ids


async def measure(
    server: LiveServer, redis: Redis, shards: int, writers: int, seconds: float
) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        coupons = [
            {"code": f"AF{i:06d}", "discount": {"kind": "flat", "value": 1}, "max_usages": 1000,
             "expires_at": "2099-01-01T00:00:00Z"} for i in range(2000)
        ]  # fmt: skip
        assert (await http.post("/v1/coupons", json={"coupons": coupons})).status_code == 201
        before = await trail(redis, shards)
        after = (await http.get("/v1/audit", params={"limit": 1})).json()["next"]
        seen: list[str] = []
        pages = 0
        until = time.monotonic() + seconds
        allocated = 0

        async def write(w: int) -> None:
            nonlocal allocated
            i = 0
            while time.monotonic() < until:
                answer = await http.post("/v1/allocations", json={"user_id": f"w{w}-{i}"})
                allocated += answer.status_code == 201
                i += 1

        async def follow() -> None:
            nonlocal after, pages
            while True:
                writing = time.monotonic() < until
                page = (await http.get("/v1/audit", params={"limit": 1000, "after": after})).json()
                pages += 1
                seen.extend(e["id"] for e in page["entries"])
                after = page["next"]
                if not page["entries"]:
                    if not writing:
                        return
                    await asyncio.sleep(0.01)

        await asyncio.gather(follow(), *(write(w) for w in range(writers)))
    written = await trail(redis, shards) - before
    got = set(seen)
    return {
        "shards": shards, "writers": writers, "seconds": seconds, "allocated": allocated,
        "pages": pages, "returned": len(seen), "written": len(written),
        "missing": len(written - got), "duplicates": len(seen) - len(got), "extra": len(got - written),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    redis_server = RedisServer(Path(tempfile.mkdtemp(prefix="audit-follow-"))).start()
    server = LiveServer(redis_server.url, POOL_SHARDS=str(args.shards), AUDIT_MAX_LEN="1000000")
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        result = asyncio.run(measure(server, redis, args.shards, args.writers, args.seconds))
    finally:
        server.stop()
        redis_server.stop()
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
