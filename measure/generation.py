"""A generation of COUNT codes (POST /v1/batches, pattern MD-########) on `coupon-pool serve`:
how long until the batch is done, an allocation probe's latency idle and during it (the
bench's probe: `coupon-pool bench upload` measures uploads the same way), and whether the
codes are distinct and all allocatable (each in its type's available set, checked with
ZMSCORE) and `coupon-pool check` finds nothing.

    .venv/bin/python measure/generation.py [--count 1000000] [--probe-connections 10]
        [--kill-at 0.5] [--json]

--kill-at F: SIGKILL the serving process once F of the codes are stored, start another, and
time the whole batch (the second process claims the job when the first one's lease has run
out, JOB_LEASE_MS). Starts its own redis-server and service on free loopback ports
(support/), on a fresh data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from redis import Redis as SyncRedis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # support/, when run as a file
from coupon_pool.models import CouponType
from coupon_pool.pool.keys import Keys
from coupon_pool.tools.bench import report
from coupon_pool.tools.bench.http import Target, expect
from coupon_pool.tools.bench.run import drive
from coupon_pool.tools.bench.scenarios import Allocate
from support import REPO
from support.live_server import LiveServer
from support.redis_server import RedisServer

BATCH = "measured"
PATTERN = "MD-########"


def body(count: int) -> dict[str, Any]:
    return {
        "batch": BATCH, "count": count, "pattern": PATTERN, "type": "STANDARD",
        "discount": {"kind": "percent", "value": 10},
        "expires_at": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
    }  # fmt: skip


def batch_of(url: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{url}/v1/batches/{BATCH}", timeout=10).json()
    return answer


async def wait(url: str, stop_at: float | None = None) -> tuple[bool, float]:
    """Poll the batch until its generation ends (True, and when: perf_counter), or until it
    has ``stop_at`` codes stored (False, and how many)."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while True:
            batch = (await client.get(f"/v1/batches/{BATCH}")).json()
            if batch["generation"]["status"] != "running":
                return True, time.perf_counter()
            if stop_at is not None and batch["created"] >= stop_at:
                return False, batch["created"]
            await asyncio.sleep(0.05)


async def measure(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    redis = RedisServer(data / "redis").start()
    env = {"JOBS_INTERVAL_S": "0.5"}  # the service's default (support's LiveServer runs no jobs unless told)
    if args.chunk:
        env["UPLOAD_CHUNK_SIZE"] = str(args.chunk)
    server = LiveServer(redis.url, log=data / "serve-1.log", **env)
    result: dict[str, Any] = {"count": args.count, "pattern": PATTERN, "cpus": os.cpu_count()}
    try:
        target = Target(server.url)
        probe = Allocate(target, "gen", {CouponType.STANDARD: 1})
        for request in probe.setup_requests():
            await expect(target, request, 201)
        probing: asyncio.Task[Any] | None = None
        if args.probe_connections:
            idle = await drive(target, probe, args.probe_connections, args.idle_s, None, 1.0)
        done = False

        class Probe:
            def next_request(self) -> tuple[str, bytes] | None:
                return None if done else probe.next_request()

            def on_response(self, op: str, status: int, body: bytes) -> None:
                pass

        if args.probe_connections:
            probing = asyncio.create_task(drive(target, Probe(), args.probe_connections, None, None, 0))
            await asyncio.sleep(0.5)
        started = time.perf_counter()
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(f"{server.url}/v1/batches", json=body(args.count))
        answer.raise_for_status()
        result["answered_s"] = round(time.perf_counter() - started, 3)
        ended, when = await wait(server.url, None if args.kill_at is None else args.kill_at * args.count)
        if not ended:
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(10)
            result["killed_at_stored"] = int(when)
            result["killed_after_s"] = round(time.perf_counter() - started, 3)
            done = True
            if probing is not None:
                await probing  # its figures are left out: it lost its server
                probing = None
            server = LiveServer(redis.url, log=data / "serve-2.log", **env)
            ended, when = await wait(server.url)
        done = True
        result["generation_s"] = round(when - started, 3)
        if probing is not None:
            during = await probing
            idle_summary, during_summary = report.summary(idle), report.summary(during)
            result["probe"] = {
                "connections": args.probe_connections,
                "idle": idle_summary["latency_ms"],
                "idle_requests": idle_summary["requests"],
                "during_generation": during_summary["latency_ms"],
                "during_requests": during_summary["requests"],
                "errors": {**idle_summary["errors"], **during_summary["errors"]},
                "p99_ratio": round(
                    during_summary["latency_ms"]["p99"] / idle_summary["latency_ms"]["p99"], 3
                ),
            }
        result["batch"] = batch_of(server.url)
        result.update(verify(redis.url, args.count))
        server.stop()
        check = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "coupon_pool", "check", "--json", "--quiet"],
            env={**os.environ, "REDIS_URL": redis.url}, cwd=REPO, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        report_json = json.loads(check.stdout)
        result["check"] = {"exit": check.returncode, "coupons": report_json.get("coupons"),
                           "violations": len(report_json.get("violations", []))}  # fmt: skip
    finally:
        if server.process.poll() is None:
            server.process.kill()
        redis.stop()
    return result


def verify(redis_url: str, count: int) -> dict[str, Any]:
    """The batch's codes: how many, how many distinct, how many in the available set."""
    k = Keys("cp")
    with SyncRedis.from_url(redis_url, decode_responses=True) as r:
        codes: list[str] = []
        for start in range(0, r.llen(k.batch_codes(BATCH)), 50_000):
            codes += r.lrange(k.batch_codes(BATCH), start, start + 49_999)
        allocatable = 0
        for start in range(0, len(codes), 10_000):
            scores = r.zmscore(k.available(CouponType.STANDARD), codes[start : start + 10_000])
            allocatable += sum(s is not None for s in scores)
        off = r.hget(k.rules, BATCH)
    return {"codes": len(codes), "distinct": len(set(codes)), "allocatable": allocatable, "batch_rules": off}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1_000_000)
    p.add_argument("--probe-connections", type=int, default=10, help="0: no probe")
    p.add_argument("--idle-s", type=float, default=5.0, help="seconds of the idle probe")
    p.add_argument("--kill-at", type=float, default=None, help="SIGKILL the server at this share stored")
    p.add_argument("--chunk", type=int, default=None, help="the service's UPLOAD_CHUNK_SIZE")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="generation-") as tmp:
        result = asyncio.run(measure(args, Path(tmp)))
    print(json.dumps(result, indent=2) if args.json else result)


if __name__ == "__main__":
    main()
