"""CPU per redemption in the app itself, without HTTP (the redemption twin of app_cpu.py).

    python measure/redeem_cpu.py [REQUESTS] [REDIS_URL]   (defaults: 5000, redis://127.0.0.1:6390/0)

Allocates 4 x REQUESTS usages of one coupon beforehand (not measured), then redeems them
in four rounds of REQUESTS from 100 concurrent tasks, as ASGI calls with the body already
received; prints this process's CPU per redemption and Redis's time per FCALL in each
round, on stderr (send stdout, the app's log lines, to /dev/null). It FLUSHES the Redis
at REDIS_URL first: point it at a Redis of its own.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

import orjson
import uvloop
from app_cpu import CONCURRENCY, call  # this folder: scripts are run as files
from redis.asyncio import Redis

from coupon_pool.http.app import create_app
from coupon_pool.settings import Settings


async def main(requests: int, url: str) -> None:
    app = create_app(Settings(redis_url=url))
    redis = Redis.from_url(url, decode_responses=True)
    await redis.flushall()
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    coupon = {"code": "CPU-0", "discount": {"kind": "flat", "value": "1.50"}, "expires_at": expires,
              "max_usages": 1_000_000}  # fmt: skip
    async with app.router.lifespan_context(app):
        await call(app, "/v1/coupons", orjson.dumps({"coupons": [coupon]}))
        total = 4 * requests

        async def allocate(first: int, last: int) -> None:
            for i in range(first, last):
                if await call(app, "/v1/allocations", b'{"user_id":"u%d"}' % i) != 201:
                    raise RuntimeError("allocation refused")

        step = total // CONCURRENCY
        await asyncio.gather(*(allocate(k * step, (k + 1) * step) for k in range(CONCURRENCY)))
        users = iter(range(total))
        app_us, redis_us = [], []
        for _ in range(4):
            await redis.config_resetstat()

            async def redeem(count: int) -> None:
                for _ in range(count):
                    body = b'{"code":"CPU-0","user_id":"u%d"}' % next(users)
                    if await call(app, "/v1/redemptions", body) != 201:
                        raise RuntimeError("redemption refused")

            started = time.process_time()
            await asyncio.gather(*(redeem(requests // CONCURRENCY) for _ in range(CONCURRENCY)))
            app_us.append((time.process_time() - started) / requests * 1e6)
            redis_us.append((await redis.info("commandstats"))["cmdstat_fcall"]["usec_per_call"])
    await redis.aclose()
    rounds = ", ".join(f"{v:.1f}" for v in app_us)
    print(f"app {statistics.median(app_us):.1f} us/redemption (rounds: {rounds}); "
          f"Redis {statistics.median(redis_us):.2f} us/FCALL", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000,
                    sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6390/0"))  # fmt: skip
