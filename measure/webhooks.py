"""Webhooks end to end (issue 26's check): does a receiver that fails for a while, fed by two
app processes under mixed load, end with every event of the trail acknowledged?

    python measure/webhooks.py [--fail-s 30] [--load-s 60] [--kill] [--shards 16] [--workers 8]

Starts a redis-server, a receiver (support/webhooks.py) answering 500 for its first --fail-s
seconds, and two `coupon-pool serve` with WEBHOOK_URL; uploads coupons, then runs --load-s of
allocations, redemptions and releases through both. With --kill, the first process is
SIGKILLed half-way through the load (the rest goes through the second). Then it waits for
the receiver to have acknowledged every entry of the trail (--drain-s at most), and prints
as JSON: entries expected and delivered, missing (must be 0), extra, duplicates, and the
delivery lag (first 2xx POST's arrival minus the entry's time) at the median and p99, of the
entries written after the receiver recovered.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # support/, when run as a file
from support.live_server import LiveServer
from support.redis_server import RedisServer
from support.webhooks import Receiver, compare, coupons, mixed_load, trail

NAMESPACE = "cp"
SECRET = "measure-webhooks-secret-0123456789"


async def load(servers: list[LiveServer], seconds: float, workers: int, kill: bool) -> dict[str, int]:
    urls = [s.url for s in servers]
    if not kill:
        return dict((await mixed_load(urls, seconds, workers)).answers)
    half = seconds / 2
    before = await mixed_load(urls, half, workers)
    servers[0].process.kill()
    servers[0].process.wait(10)
    after = await mixed_load(urls[1:], seconds - half, workers)
    return dict(before.answers + after.answers)


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    redis = RedisServer(work / "redis").start()
    receiver = Receiver(fail_s=args.fail_s)
    recovered_ms = int((time.time() + args.fail_s) * 1000)
    env = {"KEY_NAMESPACE": NAMESPACE, "POOL_SHARDS": str(args.shards), "WEBHOOK_URL": receiver.url,
           "WEBHOOK_SECRET": SECRET, "WEBHOOK_BACKOFF_S": "0.5", "WEBHOOK_MAX_BACKOFF_S": "5",
           "FEED_TRIM_INTERVAL_S": "1"}  # fmt: skip
    servers = [LiveServer(redis.url, log=work / f"app{i}.log", **env) for i in range(2)]
    try:
        posted = httpx.post(f"{servers[0].url}/v1/coupons", json={"coupons": coupons(5000)}, timeout=60)
        assert posted.status_code == 201, posted.text
        answers = asyncio.run(load(servers, args.load_s, args.workers, args.kill))
        loaded = time.monotonic()
        deadline = loaded + args.drain_s
        while True:
            outcome = compare(receiver, trail(redis.url, NAMESPACE, args.shards), lag_after_ms=recovered_ms)
            if not outcome.missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return {
            "fail_s": args.fail_s, "load_s": args.load_s, "shards": args.shards, "kill": args.kill,
            "requests": answers, **outcome.summary(), "drained_in_s": round(time.monotonic() - loaded, 1),
            "posts": len(receiver.received), "posts_refused": len(receiver.answered(500)),
        }  # fmt: skip
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.stop()
        receiver.stop()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--fail-s", type=float, default=30.0, help="the receiver answers 500 this long")
    parser.add_argument("--load-s", type=float, default=60.0, help="seconds of mixed load")
    parser.add_argument("--kill", action="store_true", help="SIGKILL the first process half-way through")
    parser.add_argument("--shards", type=int, default=16, help="POOL_SHARDS")
    parser.add_argument("--workers", type=int, default=8, help="concurrent clients of the load")
    parser.add_argument("--drain-s", type=float, default=120.0, help="the longest wait for delivery after")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        print(orjson.dumps(measure(args, Path(work)), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
