"""CPU per allocation in the app itself, without HTTP: the service's path against the ceiling's.

    python measure/app_cpu.py [REQUESTS] [ROUNDS] [REDIS_URL]   (defaults: 10000, 5, redis://127.0.0.1:6390/0)

Each app (the service, then the reference endpoint of `coupon-pool bench --reference`)
is called as an ASGI app by 100 concurrent tasks of this process, on uvloop, with the
request body already received; the figure is this process's CPU time per request (Redis
runs elsewhere). Rounds alternate between the two apps and the medians are printed. It
writes coupons and allocations into the Redis at REDIS_URL (the keys of the default
namespace): point it at a Redis you can flush.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import uvloop
from starlette.applications import Starlette

from coupon_pool.http.app import create_app
from coupon_pool.settings import Settings
from coupon_pool.tools.bench.reference import create_reference_app

CONCURRENCY = 100
users = itertools.count()


async def call(app: Starlette, path: str, body: bytes) -> int:
    """One POST through the whole ASGI app; its status."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8080), "scheme": "http",
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)  # type: ignore[arg-type]
    return status


async def cpu_per_request(app: Starlette, requests: int) -> float:
    """Microseconds of this process's CPU per allocation, over ``requests`` of them."""

    async def worker(count: int) -> None:
        for _ in range(count):
            body = b'{"user_id":"cpu-%d","type":"STANDARD"}' % next(users)
            status = await call(app, "/v1/allocations", body)
            if status != 201:
                raise RuntimeError(f"allocation answered {status}")

    started = time.process_time()
    await asyncio.gather(*(worker(requests // CONCURRENCY) for _ in range(CONCURRENCY)))
    return (time.process_time() - started) / requests * 1e6


async def main(requests: int, rounds: int, url: str) -> None:
    settings = Settings(redis_url=url)
    service, reference = create_app(settings), create_reference_app(settings)
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    coupons = [
        {"code": f"CPU-{i}", "discount": {"kind": "flat", "value": "1.50"}, "expires_at": expires,
         "max_usages": 1_000_000}
        for i in range(50)
    ]  # fmt: skip
    figures: dict[str, list[float]] = {"service": [], "reference": []}
    async with service.router.lifespan_context(service), reference.router.lifespan_context(reference):
        await call(service, "/v1/coupons", orjson.dumps({"coupons": coupons}))
        for app in (service, reference):
            await cpu_per_request(app, 2_000)  # warm-up
        for _ in range(rounds):
            figures["service"].append(await cpu_per_request(service, requests))
            figures["reference"].append(await cpu_per_request(reference, requests))
    for name, values in figures.items():
        rounded = ", ".join(f"{v:.1f}" for v in values)
        print(
            f"{name:9} median {statistics.median(values):6.1f} us/request  (rounds: {rounded})",
            file=sys.stderr,
        )


if __name__ == "__main__":
    args = sys.argv[1:]
    uvloop.run(
        main(
            int(args[0]) if args else 10_000,
            int(args[1]) if len(args) > 1 else 5,
            args[2] if len(args) > 2 else "redis://127.0.0.1:6390/0",
        )
    )
