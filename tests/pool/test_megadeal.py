"""The MEGADEAL gate on a real redis-server: concurrency, rolling-second rate, bounded FIFO waits."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import httpx
import orjson
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from coupon_pool.errors import MegadealBusy, PoolEmpty
from coupon_pool.http.app import create_app
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.megadeal import MegadealGate
from coupon_pool.pool.store import Store
from coupon_pool.results import Allocation
from coupon_pool.settings import MegadealLimits, Settings
from support import REPO
from support.cluster import CLUSTER_SHARDS, cluster_client
from support.factories import coupon
from support.live_server import LiveServer
from support.redis_server import RedisServer

MakeGate = Callable[..., Awaitable[MegadealGate]]
HIGH_WATER = "{cp}:mega:hwm"


@asynccontextmanager
async def gates(connect: Callable[[], Redis], shards: int) -> AsyncIterator[MakeGate]:
    clients: list[Redis] = []

    async def make(coupons: int = 300, **limits: float) -> MegadealGate:
        client, blocking = connect(), connect()
        clients.extend((client, blocking))
        gate = MegadealGate(client, Keys("cp"), MegadealLimits(**limits), blocking_redis=blocking)  # type: ignore[arg-type]
        store = Store(client, Keys("cp"), shards=shards)
        await store.prepare()
        if coupons and not await client.exists("{cp}:avail:MEGADEAL"):
            await store.upload([coupon(f"MEGA-{i:04d}", type="MEGADEAL") for i in range(coupons)])
        return gate

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def make_gate(redis_server: RedisServer, redis: Redis) -> AsyncIterator[MakeGate]:
    """MEGADEAL gates with limits of the test's choosing, on the flushed real Redis."""
    async with gates(lambda: Redis.from_url(redis_server.url, decode_responses=True), 1) as make:
        yield make


@pytest.fixture(params=["redis-server", "cluster"])
async def make_any_gate(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[MakeGate]:
    """The same, and again on the real Redis Cluster with the pool in CLUSTER_SHARDS shards
    (the gate and the MEGADEAL coupons in the main slot, their codes claimed in shards)."""
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        async with gates(lambda: cluster_client(cluster), CLUSTER_SHARDS) as make:
            yield make
    else:
        with SyncRedis.from_url(redis_server.url) as flushing:
            flushing.flushall()
        async with gates(lambda: Redis.from_url(redis_server.url, decode_responses=True), 1) as make:
            yield make


def max_in_rolling_second(times: Sequence[datetime]) -> int:
    """The most allocations in any window [t, t + 1 s) starting at an allocation."""
    ms = sorted(round(t.timestamp() * 1000) for t in times)
    return max((sum(1 for u in ms if t <= u < t + 1000) for t in ms), default=0)


async def allocate_timed(gate: MegadealGate, user: str, start: float) -> tuple[Allocation | Exception, float]:
    try:
        result: Allocation | Exception = await gate.allocate(user)
    except (MegadealBusy, PoolEmpty) as exc:
        result = exc
    return result, time.monotonic() - start


async def test_concurrent_slots_never_exceed_the_limit(make_any_gate: MakeGate) -> None:
    gate = await make_any_gate(max_concurrent=3, rate_per_s=1000)
    inside = peak = 0

    async def hold(user: str) -> None:
        nonlocal inside, peak
        async with gate.slot(user):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.05)
            inside -= 1

    await asyncio.gather(*(hold(f"u{i}") for i in range(15)))
    assert peak == 3
    assert await gate.redis.get(HIGH_WATER) == "3"


async def test_no_rolling_second_holds_more_allocations_than_the_rate(make_any_gate: MakeGate) -> None:
    gate = await make_any_gate(rate_per_s=5, max_wait_s=2.5)
    start = time.monotonic()
    results = await asyncio.gather(*(allocate_timed(gate, f"u{i}", start) for i in range(30)))
    served = [r for r, _ in results if isinstance(r, Allocation)]
    assert max_in_rolling_second([a.allocated_at for a in served]) == 5
    assert 10 <= len(served) <= 15  # 5 at once, then 5 as each second of the window ends
    assert len({a.code for a in served}) == len(served)


async def test_a_waiter_gives_up_at_the_wait_cap(make_any_gate: MakeGate) -> None:
    gate = await make_any_gate(rate_per_s=1, max_wait_s=1.0)
    start = time.monotonic()
    results = await asyncio.gather(*(allocate_timed(gate, f"u{i}", start) for i in range(6)))
    failed = [elapsed for r, elapsed in results if isinstance(r, MegadealBusy)]
    assert len(failed) >= 4
    assert all(1.0 <= elapsed <= 1.5 for elapsed in failed), failed


async def test_busy_is_429_with_retry_after(settings: Settings, redis: Redis, make_gate: MakeGate) -> None:
    await make_gate()  # the coupons
    app = create_app(Settings(redis_url=settings.redis_url, megadeal_rate_per_s=1, megadeal_max_wait_s=0.5))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        body = {"user_id": "u", "type": "MEGADEAL"}
        responses = await asyncio.gather(*(http.post("/v1/allocations", json=body) for _ in range(3)))
    busy = [r for r in responses if r.status_code == 429]
    assert len(busy) == 2
    assert busy[0].json()["code"] == "megadeal_busy"
    assert busy[0].headers["content-type"] == "application/problem+json"
    assert int(busy[0].headers["retry-after"]) >= 1


async def test_waiters_are_served_in_arrival_order(make_any_gate: MakeGate) -> None:
    gate = await make_any_gate(rate_per_s=2, max_wait_s=6)
    start = time.monotonic()
    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(allocate_timed(gate, f"u{i}", start)))
        await asyncio.sleep(0.03)
    results = [r for r, _ in await asyncio.gather(*tasks)]
    assert all(isinstance(r, Allocation) for r in results)
    order = sorted(results, key=lambda a: (a.allocated_at, int(a.user_id[1:])))  # type: ignore[union-attr]
    assert [a.user_id for a in order] == [f"u{i}" for i in range(8)]  # type: ignore[union-attr]


async def test_an_empty_megadeal_pool_answers_at_once(make_any_gate: MakeGate) -> None:
    gate = await make_any_gate(coupons=0, rate_per_s=1)
    start = time.monotonic()
    results = await asyncio.gather(*(allocate_timed(gate, f"u{i}", start) for i in range(20)))
    assert all(isinstance(r, PoolEmpty) for r, _ in results)
    assert max(elapsed for _, elapsed in results) < 1.0  # no queueing (the cap here is 10 s)


async def test_waiters_learn_the_pool_ran_dry_without_waiting_out_the_cap(make_any_gate: MakeGate) -> None:
    gate = await make_any_gate(coupons=3, rate_per_s=2)
    start = time.monotonic()
    results = await asyncio.gather(*(allocate_timed(gate, f"u{i}", start) for i in range(6)))
    outcome = Counter(type(r).__name__ for r, _ in results)
    assert outcome == {"Allocation": 3, "PoolEmpty": 3}
    assert max(elapsed for _, elapsed in results) < 2.5


async def test_slots_of_a_killed_process_come_back_after_the_lease(
    make_gate: MakeGate, redis_server: RedisServer, redis: Redis
) -> None:
    gate = await make_gate(max_concurrent=2, rate_per_s=100, lease_s=1.5, max_wait_s=5)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "support" / "megadeal_holder.py"), redis_server.url, "2", "1.5",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None
    assert (await holder.stdout.readline()).strip() == b"held"
    assert await redis.zcard("{cp}:mega:slots") == 2
    holder.kill()  # SIGKILL: no chance to give the slots back
    await holder.wait()
    killed_at = time.monotonic()
    result, _ = await allocate_timed(gate, "after", killed_at)
    waited = time.monotonic() - killed_at
    assert isinstance(result, Allocation)
    assert waited <= 1.5 + 0.5  # the lease, plus at most one heartbeat's rounding


async def test_the_status_counts_held_slots_and_admissions_of_the_last_second(
    make_any_gate: MakeGate,
) -> None:
    gate = await make_any_gate(max_concurrent=3, rate_per_s=100)
    async with gate.slot("holder"):
        for user in ("a", "b"):
            await gate.allocate(user)
        during = await gate.status()
    await asyncio.sleep(1.1)
    later = await gate.status()

    assert (during.slots, during.admitted_last_s, during.queued) == (1, 3, 0)
    assert (later.slots, later.admitted_last_s) == (0, 0)  # the admissions left the rolling second


async def test_a_slot_whose_lease_ended_is_not_counted_in_use(
    make_gate: MakeGate, redis_server: RedisServer, redis: Redis
) -> None:
    gate = await make_gate(max_concurrent=2, rate_per_s=100, lease_s=1.0)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "support" / "megadeal_holder.py"), redis_server.url, "1", "1.0",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None
    assert (await holder.stdout.readline()).strip() == b"held"
    assert (await gate.status()).slots == 1
    holder.kill()
    await holder.wait()
    await asyncio.sleep(1.6)  # the lease, and a heartbeat's rounding

    assert await redis.zcard("{cp}:mega:slots") == 1  # still listed: no gate call removed it
    assert (await gate.status()).slots == 0


async def test_waiting_megadeal_requests_do_not_starve_other_types(
    settings: Settings, make_gate: MakeGate
) -> None:
    gate = await make_gate(max_concurrent=1)
    await Store(gate.redis, Keys("cp")).upload([coupon(f"STD-{i:03d}") for i in range(50)])
    app = create_app(
        Settings(
            redis_url=settings.redis_url,
            redis_max_connections=4,
            megadeal_max_concurrent=1,
            megadeal_max_wait_s=3,
        )
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
        gate.slot("holder"),  # the only slot is taken: waiters block on Redis
    ):
        mega = [
            asyncio.create_task(http.post("/v1/allocations", json={"user_id": f"m{i}", "type": "MEGADEAL"}))
            for i in range(100)
        ]
        await asyncio.sleep(0.3)
        assert gate.waiting == 0  # this gate is not the app's
        standard = await asyncio.gather(
            *(http.post("/v1/allocations", json={"user_id": f"s{i}"}) for i in range(50))
        )
        assert Counter(r.status_code for r in standard) == {201: 50}
        assert not any(t.done() for t in mega)  # they were still waiting all along
        for t in mega:
            t.cancel()
        await asyncio.gather(*mega, return_exceptions=True)


async def test_two_app_processes_share_the_limits(redis_server: RedisServer, make_gate: MakeGate) -> None:
    await make_gate()
    env = {"MEGADEAL_RATE_PER_S": "4", "MEGADEAL_MAX_WAIT_S": "2.2", "MEGADEAL_MAX_CONCURRENT": "3"}
    servers = [LiveServer(redis_server.url, **env) for _ in range(2)]
    try:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as http:
            results = await asyncio.gather(
                *(
                    http.post(f"{s.url}/v1/allocations", json={"user_id": f"u{i}", "type": "MEGADEAL"})
                    for s in servers
                    for i in range(15)
                )
            )
    finally:
        for s in servers:
            s.stop()
    served = [r.json() for r in results if r.status_code == 201]
    assert set(Counter(r.status_code for r in results)) == {201, 429}
    assert max_in_rolling_second([datetime.fromisoformat(a["allocated_at"]) for a in served]) == 4
    assert 8 <= len(served) <= 12  # 4 at once, then 4 per second, across both processes


async def test_150_at_once_on_the_default_limits(
    redis_server: RedisServer, make_gate: MakeGate, tmp_path: Path
) -> None:
    await make_gate(coupons=300)
    log = tmp_path / "server.log"
    server = LiveServer(redis_server.url, log=log, LOG_LEVEL="info")  # MEGADEAL defaults: 5, 10/s, 10 s
    try:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as http:
            start = time.monotonic()

            async def one(i: int) -> tuple[httpx.Response, float]:
                response = await http.post(
                    f"{server.url}/v1/allocations", json={"user_id": f"u{i}", "type": "MEGADEAL"}
                )
                return response, time.monotonic() - start

            results = await asyncio.gather(*(one(i) for i in range(150)))
    finally:
        server.stop()
    served = [r.json() for r, _ in results if r.status_code == 201]
    failed = [elapsed for r, elapsed in results if r.status_code == 429]
    assert len(served) + len(failed) == 150
    assert 95 <= len(served) <= 110  # the limits allow 10 per second for 10 s (+10 at the edge)
    assert max_in_rolling_second([datetime.fromisoformat(a["allocated_at"]) for a in served]) <= 10
    # The cap is the server's: 10 s from when the request arrived, as its log line says. The
    # client's clock adds opening 150 connections and reading 150 answers on a shared machine.
    refused = [line["latency_ms"] for line in map(orjson.loads, log.read_bytes().splitlines())
               if line.get("status") == 429]  # fmt: skip
    assert len(refused) == len(failed)
    assert all(10_000 <= ms <= 10_250 for ms in refused), (min(refused), max(refused))
    assert all(10.0 <= elapsed <= 11.5 for elapsed in failed), (min(failed), max(failed))
