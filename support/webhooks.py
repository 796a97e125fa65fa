"""Webhooks end to end, for the tests and measure/webhooks.py: a receiver, a mixed load
through the service, and the trail's ids to compare what was delivered with.

The receiver is an HTTP server in a thread that records every POST (body, signature header,
what it answered) and answers 500 for its first ``fail_s`` seconds, or while ``failing`` is set.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
from redis import Redis
from redis.cluster import RedisCluster

from coupon_pool.pool.keys import Layout
from coupon_pool.webhooks import HEADER


@dataclass(frozen=True)
class Received:
    at: float  # time.time() when it came
    body: bytes
    signature: str
    status: int  # what the receiver answered

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in orjson.loads(self.body)["events"]]


class Receiver:
    def __init__(self, fail_s: float = 0.0) -> None:
        self.fail_until = time.monotonic() + fail_s
        self.failing = False  # answer 500 whatever fail_s said
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = 500 if receiver.failing or time.monotonic() < receiver.fail_until else 200
                got = Received(time.time(), body, self.headers.get(HEADER, ""), status)
                with receiver.lock:
                    receiver.received.append(got)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answered(self, status: int = 200) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.status == status]

    def acknowledged_ids(self) -> list[str]:
        """Every event id in a POST answered 2xx, duplicates kept."""
        return [i for r in self.answered(200) for i in r.ids]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def coupons(count: int, max_usages: int = 1000) -> list[dict[str, Any]]:
    return [
        {"code": f"WH{i:06d}", "discount": {"kind": "flat", "value": 1}, "max_usages": max_usages,
         "expires_at": "2099-01-01T00:00:00Z"} for i in range(count)
    ]  # fmt: skip


@dataclass
class Load:
    """What a mixed load did: requests by operation and answer, and the allocations answered
    201 (user, code): acknowledged to the caller."""

    answers: Counter[str]
    allocated: list[tuple[str, str]]


async def mixed_load(urls: list[str], seconds: float, workers: int = 8) -> Load:
    """For ``seconds``, ``workers`` clients spread over ``urls`` each allocate a coupon, then
    redeem it (half the time), release it (a quarter), or keep it."""
    answers: Counter[str] = Counter()
    allocations: list[tuple[str, str]] = []
    until = time.monotonic() + seconds
    users = itertools.count()

    async def work(http: httpx.AsyncClient) -> None:
        while time.monotonic() < until:
            user = f"u{next(users)}"
            allocated = await http.post("/v1/allocations", json={"user_id": user})
            answers[f"allocate {allocated.status_code}"] += 1
            if allocated.status_code != 201:
                continue
            allocations.append((user, allocated.json()["code"]))
            choice = hash(user) % 4
            if choice in (0, 1):
                route, op = "/v1/redemptions", "redeem"
            elif choice == 2:
                route, op = "/v1/releases", "release"
            else:
                continue
            done = await http.post(route, json={"code": allocated.json()["code"], "user_id": user})
            answers[f"{op} {done.status_code}"] += 1

    clients = [httpx.AsyncClient(base_url=url, timeout=30) for url in urls]
    try:
        await asyncio.gather(*(work(clients[w % len(clients)]) for w in range(workers)))
    finally:
        for client in clients:
            await client.aclose()
    return Load(answers, allocations)


def trail(redis_url: str, namespace: str, shards: int, cluster: bool = False) -> dict[str, int]:
    """Every entry of the pool's audit streams: its id as events name it -> its time, ms."""
    layout = Layout(namespace, shards)
    found: dict[str, int] = {}
    client = RedisCluster if cluster else Redis
    with client.from_url(redis_url, decode_responses=True) as redis:
        for n, k in enumerate(layout.slots):
            after = "-"
            while entries := redis.xrange(k.audit, min=after, count=10_000):
                for entry, _ in entries:
                    found[f"{entry}-{n}" if layout.sharded else entry] = int(entry.partition("-")[0])
                after = f"({entries[-1][0]}"
    return found


@dataclass(frozen=True)
class Outcome:
    """What the receiver acknowledged against the trail."""

    expected: int
    delivered: int  # distinct ids acknowledged
    missing: list[str]
    extra: list[str]  # acknowledged, and not in the trail
    duplicates: int  # ids acknowledged more than once, counted each extra time
    lag_median_s: float | None  # first 2xx POST's arrival minus the entry's time
    lag_p99_s: float | None

    def summary(self) -> dict[str, Any]:
        return {
            "expected": self.expected, "delivered": self.delivered, "missing": len(self.missing),
            "extra": len(self.extra), "duplicates": self.duplicates,
            "lag_median_s": self.lag_median_s, "lag_p99_s": self.lag_p99_s,
        }  # fmt: skip


def compare(receiver: Receiver, entries: dict[str, int], lag_after_ms: int = 0) -> Outcome:
    """The receiver's acknowledged ids against ``entries`` (trail()); the lag of the entries
    written from ``lag_after_ms`` on (those written while the receiver failed wait for it)."""
    first: dict[str, float] = {}
    counts: Counter[str] = Counter()
    for r in receiver.answered(200):
        for i in r.ids:
            counts[i] += 1
            first.setdefault(i, r.at)
    lags = sorted(first[i] - ms / 1000 for i, ms in entries.items() if i in first and ms >= lag_after_ms)
    return Outcome(
        expected=len(entries),
        delivered=len(counts),
        missing=sorted(set(entries) - set(counts)),
        extra=sorted(set(counts) - set(entries)),
        duplicates=sum(c - 1 for c in counts.values()),
        lag_median_s=round(statistics.median(lags), 3) if lags else None,
        lag_p99_s=round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 3) if lags else None,
    )
