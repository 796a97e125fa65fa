"""What webhooks cost the request path: allocation throughput with WEBHOOK_URL set against
without, in one run, and the delivery lag meanwhile (issue 26: within 10 %, lag under 2 s at
the median).

    python measure/webhooks_cost.py [--rounds 3] [--duration 8] [--connections 50] [--shards 1]
                                    [--batch N]

Starts a redis-server and a receiver (support/webhooks.py, answering 200), then per round
one `coupon-pool serve` without webhooks and one with (their order turning each round; the
pool flushed before each), each loaded by `coupon-pool bench allocate` for --duration. With
webhooks on, it waits for the receiver to have every entry of the trail, and takes each
entry's lag (its first 2xx POST's arrival minus its time). Prints, as JSON, the req/s of each
run and its ratio to the pipelined ceiling run beside it (`--reference --pipelined-reference`),
the ratio of the medians (on / off) of each, and the lag's median and p99 over the runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # support/, when run as a file
from support.live_server import LiveServer
from support.redis_server import RedisServer
from support.webhooks import Receiver, compare, trail

SECRET = "measure-webhooks-secret-0123456789"


def bench(url: str, redis_url: str, seconds: float, connections: int) -> tuple[float, float]:
    """The service's allocations a second, and their ratio to the pipelined ceiling's (the
    bench's bare Starlette + auto-pipelined function call, run right after on the same Redis)."""
    done = subprocess.run(
        [sys.executable, "-m", "coupon_pool", "bench", "allocate", "--url", url, "--duration", str(seconds),
         "--connections", str(connections), "--json", "--quiet", "--redis-url", redis_url,
         "--reference", "--pipelined-reference"],
        capture_output=True, text=True, timeout=2 * seconds + 180, check=True,
    )  # fmt: skip
    result = orjson.loads(done.stdout)
    return float(result["service"]["throughput"]), float(result["ratios"]["throughput"])


def run(
    redis: RedisServer, receiver: Receiver, args: argparse.Namespace, hooks: bool, work: Path
) -> dict[str, Any]:
    with Redis.from_url(redis.url) as client:
        client.flushall()
    receiver.received.clear()
    env = {"POOL_SHARDS": str(args.shards)}
    if hooks:
        env |= {"WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET}
        if args.batch:
            env["WEBHOOK_BATCH"] = str(args.batch)
    server = LiveServer(redis.url, log=work / "app.log", **env)
    try:
        throughput, ratio = bench(server.url, redis.url, args.duration, args.connections)
        found: dict[str, Any] = {"webhooks": hooks, "throughput": throughput, "ratio_to_ceiling": ratio}
        if hooks:
            deadline = time.monotonic() + 120
            while True:
                outcome = compare(receiver, trail(redis.url, "cp", args.shards))
                if not outcome.missing or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            found |= {"events": outcome.expected, "missing": len(outcome.missing),
                      "posts": len(receiver.received), "lag_median_s": outcome.lag_median_s,
                      "lag_p99_s": outcome.lag_p99_s}  # fmt: skip
        return found
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load per run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--shards", type=int, default=1, help="POOL_SHARDS")
    parser.add_argument("--batch", type=int, default=0, help="WEBHOOK_BATCH (default: the setting's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        redis = RedisServer(Path(work) / "redis").start()
        receiver = Receiver()
        try:
            runs = []
            for r in range(args.rounds):
                for hooks in (False, True) if r % 2 == 0 else (True, False):
                    runs.append(run(redis, receiver, args, hooks, Path(work)))
        finally:
            receiver.stop()
            redis.stop()
    on = [x["throughput"] for x in runs if x["webhooks"]]
    off = [x["throughput"] for x in runs if not x["webhooks"]]
    summary = {
        "runs": runs,
        "median_off": statistics.median(off),
        "median_on": statistics.median(on),
        "ratio_on_off": round(statistics.median(on) / statistics.median(off), 3),
        # The figure to hold to 10 %: each run's ratio to the ceiling measured beside it absorbs
        # the noise of a shared machine, which the raw req/s do not.
        "ceiling_ratio_on_off": round(
            statistics.median(x["ratio_to_ceiling"] for x in runs if x["webhooks"])
            / statistics.median(x["ratio_to_ceiling"] for x in runs if not x["webhooks"]),
            3,
        ),
        "lag_median_s": statistics.median(x["lag_median_s"] for x in runs if x["webhooks"]),
        "lag_p99_s": statistics.median(x["lag_p99_s"] for x in runs if x["webhooks"]),
        "missing": sum(x["missing"] for x in runs if x["webhooks"]),
    }
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
