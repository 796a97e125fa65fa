"""Webhooks end to end (issue 26's check): does a receiver that fails for a while, fed by two
app processes under mixed load, end with every event of the trail acknowledged?

    python measure/webhooks.py [--fail-s 30] [--load-s 60] [--kill] [--shards 16] [--workers 8]
    python measure/webhooks.py --cluster --failover   # 6 nodes, REDIS_WAIT_REPLICAS=1, a master killed

Starts a redis-server, a receiver (support/webhooks.py) answering 500 for its first --fail-s
seconds, and two `coupon-pool serve` with WEBHOOK_URL; uploads coupons, then runs --load-s of
allocations, redemptions and releases through both. With --kill, the first process is
SIGKILLed half-way through the load (the rest goes through the second). Then it waits for
the receiver to have acknowledged every entry of the trail (--drain-s at most), and prints
as JSON: entries expected and delivered, missing (must be 0), extra, duplicates, and the
delivery lag (first 2xx POST's arrival minus the entry's time) at the median and p99, of the
entries written after the receiver recovered.

With --cluster the pool is on a Redis Cluster of its own (three masters, a replica each;
support/cluster.py) and the processes wait for a replica (REDIS_WAIT_REPLICAS=1). With
--failover, half-way through the load the master of the first shard's slot is SIGKILLed, its
replica takes over, and it comes back as a replica. Then every allocation answered 201 must be
among the allocate events delivered (`acknowledged_not_delivered`, must be 0): an answer the
caller had is neither lost from the trail nor from the feed.
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
from redis.crc import key_slot

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # support/, when run as a file
from support.cluster import Cluster
from support.live_server import LiveServer
from support.redis_server import RedisServer
from support.webhooks import Receiver, compare, coupons, mixed_load, trail

NAMESPACE = "cp"
SECRET = "measure-webhooks-secret-0123456789"


async def load(
    servers: list[LiveServer], seconds: float, workers: int, kill: bool, cluster: Cluster | None
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    urls = [s.url for s in servers]
    if not kill and cluster is None:
        done = await mixed_load(urls, seconds, workers)
        return dict(done.answers), done.allocated
    half = seconds / 2
    before = await mixed_load(urls, half, workers)
    if kill:
        servers[0].process.kill()
        servers[0].process.wait(10)
        urls = urls[1:]
    if cluster is None:
        after = await mixed_load(urls, seconds - half, workers)
    else:
        after, _ = await asyncio.gather(
            mixed_load(urls, seconds - half, workers), asyncio.to_thread(failover, cluster)
        )
    return dict(before.answers + after.answers), before.allocated + after.allocated


def failover(cluster: Cluster) -> None:
    """The master of the first shard's slot killed; its replica takes over; it comes back as a replica."""
    victim = cluster.master_of_slot(key_slot(f"{{{NAMESPACE}:0}}".encode()))
    victim.kill()
    time.sleep(0.5)
    cluster.wait_healthy(60)
    victim.start()
    cluster.wait_healthy(60)


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cluster = Cluster(work / "cluster").start() if args.cluster else None
    redis = None if cluster else RedisServer(work / "redis").start()
    url = cluster.url if cluster else redis.url  # type: ignore[union-attr]
    receiver = Receiver(fail_s=args.fail_s)
    recovered_ms = int((time.time() + args.fail_s) * 1000)
    env = {"KEY_NAMESPACE": NAMESPACE, "POOL_SHARDS": str(args.shards), "WEBHOOK_URL": receiver.url,
           "WEBHOOK_SECRET": SECRET, "WEBHOOK_BACKOFF_S": "0.5", "WEBHOOK_MAX_BACKOFF_S": "5",
           "FEED_TRIM_INTERVAL_S": "1"}  # fmt: skip
    if cluster:
        env |= {"REDIS_CLUSTER": "1", "REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT_MS": "500"}
    servers = [LiveServer(url, log=work / f"app{i}.log", **env) for i in range(2)]
    try:
        posted = httpx.post(f"{servers[0].url}/v1/coupons", json={"coupons": coupons(5000)}, timeout=60)
        assert posted.status_code == 201, posted.text
        failing_over = cluster if args.failover else None
        answers, allocated = asyncio.run(load(servers, args.load_s, args.workers, args.kill, failing_over))
        loaded = time.monotonic()
        deadline = loaded + args.drain_s
        while True:
            entries = trail(cluster.url if cluster else url, NAMESPACE, args.shards, cluster=bool(cluster))
            outcome = compare(receiver, entries, lag_after_ms=recovered_ms)
            if not outcome.missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        delivered = {
            (e.get("user_id"), e.get("code"))
            for r in receiver.answered(200)
            for e in orjson.loads(r.body)["events"]
            if e["op"] == "allocate"
        }
        return {
            "fail_s": args.fail_s, "load_s": args.load_s, "shards": args.shards, "kill": args.kill,
            "cluster": args.cluster, "failover": args.failover,
            "requests": answers, **outcome.summary(), "drained_in_s": round(time.monotonic() - loaded, 1),
            "posts": len(receiver.received), "posts_refused": len(receiver.answered(500)),
            "allocations_acknowledged": len(allocated),
            "acknowledged_not_delivered": len(set(allocated) - delivered),
        }  # fmt: skip
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.stop()
        receiver.stop()
        if cluster:
            cluster.stop()
        if redis:
            redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--fail-s", type=float, default=30.0, help="the receiver answers 500 this long")
    parser.add_argument("--load-s", type=float, default=60.0, help="seconds of mixed load")
    parser.add_argument("--kill", action="store_true", help="SIGKILL the first process half-way through")
    parser.add_argument("--shards", type=int, default=16, help="POOL_SHARDS")
    parser.add_argument("--workers", type=int, default=8, help="concurrent clients of the load")
    parser.add_argument(
        "--cluster", action="store_true", help="a Redis Cluster of 6 nodes, REDIS_WAIT_REPLICAS=1"
    )
    parser.add_argument("--failover", action="store_true", help="with --cluster: kill a master half-way")
    parser.add_argument("--drain-s", type=float, default=120.0, help="the longest wait for delivery after")
    args = parser.parse_args()
    if args.failover and not args.cluster:
        parser.error("--failover needs --cluster")
    with tempfile.TemporaryDirectory() as work:
        print(orjson.dumps(measure(args, Path(work)), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
