"""Exporting a batch of N coupons (issue 25's figure: 1,000,000): wall time, Redis's slowest
command during it, the app's peak RSS, and the file uploaded back.

    python measure/export_big.py [N] [FORMAT ...]     (defaults: 1000000, jsonl csv)

Starts a redis-server of its own with redis.conf (support/redis_server.py) and stores N
coupons in batch "big" with Store.upload (a third of each type, short metadata on every
other one, 2 usages on every fourth), then starts `coupon-pool serve` (support/live_server.py)
and for each FORMAT:
- sets slowlog-log-slower-than to 100 us and resets SLOWLOG (at 0, Redis 7 logs every
  command a function runs too, and the logging then adds a third to a call's time), runs
  `coupon-pool export --batch big FILE.<format> --json --quiet` and times it; reads the app
  process's RSS from /proc every 20 ms while it runs, and its VmHWM (the peak since it
  started) after;
- reads SLOWLOG: the slowest command (SLOWLOG's and CONFIG's own aside), and the
  export_page calls' count, median, p99, max and how many took over 5 ms; whether Redis
  forked meanwhile (an AOF rewrite), and LATENCY LATEST (events over 5 ms);
- runs `coupon-pool upload FILE --json --quiet` and prints its created and duplicates.
Prints one JSON object per format.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # support/, when run as a file
from coupon_pool.models import CouponIn, CouponType, FlatDiscount
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from support.live_server import LiveServer
from support.redis_server import RedisServer

CHUNK = 50_000
SLOWLOG_US = 100


async def store_coupons(url: str, count: int) -> float:
    redis = Redis.from_url(url, decode_responses=True)
    store = Store(redis, Keys("cp"), upload_chunk_size=1000)
    await store.prepare()
    expires = datetime.now(UTC) + timedelta(days=30)
    types = list(CouponType)
    started = time.monotonic()
    for start in range(0, count, CHUNK):
        await store.upload(
            [
                CouponIn.model_construct(
                    code=f"EXP-{i:07d}",
                    type=types[i % 3],
                    discount=FlatDiscount.model_construct(kind="flat", value="12.50"),
                    expires_at=expires,
                    max_usages=2 if i % 4 == 0 else 1,
                    starts_at=None,
                    metadata={"campaign": "spring-26"} if i % 2 else None,
                )
                for i in range(start, min(start + CHUNK, count))
            ],
            batch="big",
        )
    await redis.aclose()
    return time.monotonic() - started


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"no {field} for {pid}")


class RssWatch(threading.Thread):
    """The largest VmRSS of ``pid`` seen every 20 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self.done.wait(0.02)


def command(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "coupon_pool", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"coupon-pool {args[0]} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def export_once(server: LiveServer, redis: SyncRedis, fmt: str, directory: Path) -> dict[str, Any]:
    path = directory / f"big.{fmt}"
    redis.config_set("slowlog-log-slower-than", SLOWLOG_US)
    redis.config_set("slowlog-max-len", 100_000)
    redis.slowlog_reset()
    redis.config_set("latency-monitor-threshold", 5)
    redis.execute_command("LATENCY", "RESET")
    forks = redis.info("stats")["total_forks"]
    pid = server.process.pid
    before = rss_kib(pid)
    watch = RssWatch(pid)
    watch.start()
    started = time.monotonic()
    exported = command("export", "--batch", "big", str(path), "--url", server.url, "--json", "--quiet")
    seconds = time.monotonic() - started
    watch.done.set()
    watch.join()
    log: list[dict[str, Any]] = redis.slowlog_get(100_000)  # type: ignore[assignment]
    log = [e for e in log if not _bytes(e["command"]).startswith((b"SLOWLOG", b"CONFIG"))]
    slowest = max(log, key=lambda entry: entry["duration"])
    pages = [e["duration"] for e in log if b"export_page" in _bytes(e["command"])[:64]]
    forks = redis.info("stats")["total_forks"] - forks
    latency = {_bytes(e[0]).decode(): e[2] for e in redis.execute_command("LATENCY", "LATEST")}
    loaded = command("upload", str(path), "--url", server.url, "--json", "--quiet")
    return {
        "format": fmt,
        "coupons": exported["coupons"],
        "bytes": exported["bytes"],
        "export_s": round(seconds, 2),
        "coupons_per_s": round(exported["coupons"] / seconds),
        "slowest_command_us": slowest["duration"],
        "slowest_command": _bytes(slowest["command"])[:80].decode(errors="replace"),
        "slowlog_entries": len(log),
        "export_page_calls": len(pages),
        "export_page_median_us": statistics.median(pages) if pages else None,
        "export_page_p99_us": statistics.quantiles(pages, n=100, method="inclusive")[98]
        if len(pages) > 1
        else None,
        "export_page_max_us": max(pages) if pages else None,
        "export_page_over_5ms": sum(1 for d in pages if d > 5000),
        "forks_during": forks,  # an AOF rewrite's fork: its copy-on-write slows the calls after it
        "latency_latest_ms": latency,  # LATENCY LATEST: the worst of each event over 5 ms
        "app_rss_before_mib": round(before / 1024, 1),
        "app_rss_peak_during_mib": round(watch.peak / 1024, 1),
        "app_vmhwm_after_mib": round(rss_kib(pid, "VmHWM") / 1024, 1),
        "upload_back": {k: loaded[k] for k in ("coupons", "created", "duplicates", "seconds")},
    }


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    formats = sys.argv[2:] or ["jsonl", "csv"]
    directory = Path(tempfile.mkdtemp(prefix="export-big-"))
    redis_server = RedisServer(directory / "redis").start()
    try:
        stored_s = asyncio.run(store_coupons(redis_server.url, count))
        print(json.dumps({"stored": count, "store_s": round(stored_s, 1)}), flush=True)
        server = LiveServer(redis_server.url)
        try:
            with SyncRedis.from_url(redis_server.url) as redis:
                for fmt in formats:
                    print(json.dumps(export_once(server, redis, fmt, directory)), flush=True)
                    (directory / f"big.{fmt}").unlink()
        finally:
            server.stop()
    finally:
        redis_server.stop()
        subprocess.run(["rm", "-rf", str(directory)], check=False)


if __name__ == "__main__":
    os.environ.setdefault("LOG_LEVEL", "warning")
    main()
