"""Redis killed (SIGKILL) under load and started again, against real processes.

What these prove: while Redis is down the API answers 503 store_unavailable at once (not
after a hang); it recovers by itself when Redis is back, without an app restart; and no
acknowledged allocation is lost across the kill, with `appendfsync always` and also with
the shipped `everysec` (a killed Redis process has already handed every acknowledged write
to the kernel; the everysec window is about the machine losing power, see docs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis as AsyncRedis

from coupon_pool.pool.keys import Keys
from coupon_pool.tools.check import check
from support import REPO, wait_until
from support.factories import coupon_json
from support.live_server import LiveServer
from support.redis_server import RedisServer


def start_pair(tmp_path: Path, *redis_args: str) -> tuple[RedisServer, LiveServer]:
    redis = RedisServer(tmp_path / "redis", *redis_args).start()
    return redis, LiveServer(redis.url, REDIS_TIMEOUT_S="1")


async def raw_allocate(port: int, user: str) -> tuple[int, dict[str, Any]]:
    """One allocation on a connection of its own, with no client library in between.

    500 of these open and send within a few milliseconds; through httpx they trickle out
    over seconds on a loaded 2-core machine, and a connection that waits more than
    uvicorn's keep-alive timeout (5 s) for its request is closed by the server.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = orjson.dumps({"user_id": user, "type": "STANDARD"})
    writer.write(
        b"POST /v1/allocations HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )
    answer = await reader.read()  # the server closes after the answer
    writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(payload)


async def allocate(http: httpx.AsyncClient, user: str) -> httpx.Response:
    return await http.post("/v1/allocations", json={"user_id": user, "type": "STANDARD"})


async def stock(http: httpx.AsyncClient, prefix: str) -> None:
    """Five STANDARD coupons of 1,000 usages: enough for every allocation of a test."""
    coupons = [coupon_json(f"{prefix}{i}", max_usages=1000) for i in range(5)]
    assert (await http.post("/v1/coupons", json={"coupons": coupons})).status_code == 201


@contextlib.contextmanager
def paused(redis: RedisServer) -> Iterator[None]:
    """Redis stopped (SIGSTOP) for the block: the kernel still accepts connections, nothing answers."""
    assert redis.process is not None
    os.kill(redis.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(redis.process.pid, signal.SIGCONT)


async def test_redis_down_is_a_fast_503_and_the_app_recovers_by_itself(tmp_path: Path) -> None:
    redis, app = start_pair(tmp_path)
    try:
        async with httpx.AsyncClient(base_url=app.url, timeout=10) as http:
            await stock(http, "F")
            assert (await allocate(http, "before")).status_code == 201

            redis.kill()
            for user in ("down-1", "down-2", "down-3"):
                started = time.monotonic()
                response = await allocate(http, user)
                assert time.monotonic() - started < 1.0
                assert response.status_code == 503
                assert response.json()["code"] == "store_unavailable"
            assert (await http.get("/readyz")).status_code == 503
            assert (await http.get("/healthz")).status_code == 200  # the process itself is fine

            redis.start()  # same port, same data directory: the AOF is replayed
            wait_until(lambda: httpx.get(f"{app.url}/readyz").status_code == 200)
            assert (await allocate(http, "after")).status_code == 201  # scripts reloaded by themselves
            stats = (await http.get("/v1/stats")).json()
            assert stats["types"]["STANDARD"]["allocated"] == 2  # before and after; none while down
    finally:
        app.stop()
        redis.stop()


async def test_a_paused_redis_is_a_503_within_the_timeout_not_a_pile_up(tmp_path: Path) -> None:
    """SIGSTOP: connections are still accepted by the kernel, but nothing answers."""
    redis, app = start_pair(tmp_path)  # REDIS_TIMEOUT_S=1
    try:
        async with httpx.AsyncClient(base_url=app.url, timeout=10) as http:
            await stock(http, "P")
            with paused(redis):
                started = time.monotonic()
                answers = await asyncio.gather(*(allocate(http, f"slow-{i}") for i in range(40)))
                elapsed = time.monotonic() - started
            assert {(r.status_code, r.json()["code"]) for r in answers} == {(503, "store_unavailable")}
            assert "timeout" in answers[0].json()["detail"].lower()
            assert 0.9 < elapsed < 3.0  # each waited the 1 s timeout, all at once, none queued behind
            wait_until(lambda: httpx.get(f"{app.url}/readyz").status_code == 200)
            assert (await allocate(http, "after")).status_code == 201
    finally:
        app.stop()
        redis.stop()


@pytest.mark.parametrize("fsync", ["always", "everysec"])
async def test_no_acknowledged_allocation_is_lost_when_redis_is_killed_under_load(
    tmp_path: Path, fsync: str
) -> None:
    redis, app = start_pair(tmp_path, "--appendfsync", fsync)
    acknowledged: list[tuple[str, str]] = []
    refused = 0
    try:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=app.url, timeout=10, limits=limits) as http:
            coupons = [coupon_json(f"K{i}", max_usages=100_000) for i in range(10)]
            assert (await http.post("/v1/coupons", json={"coupons": coupons})).status_code == 201
            stop = asyncio.Event()

            async def client(n: int) -> None:
                nonlocal refused
                i = 0
                while not stop.is_set():
                    user = f"c{n}-{i}"
                    i += 1
                    response = await allocate(http, user)
                    if response.status_code == 201:
                        acknowledged.append((response.json()["code"], user))
                    else:
                        assert response.json()["code"] == "store_unavailable"
                        refused += 1

            clients = [asyncio.create_task(client(n)) for n in range(30)]
            await asyncio.sleep(1.5)
            redis.kill()  # SIGKILL: no shutdown, no final fsync
            killed_after = len(acknowledged)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*clients)
    finally:
        app.stop()
    assert killed_after > 100  # it was under load
    assert refused > 0  # and requests kept coming while Redis was down

    redis.start()
    try:
        with SyncRedis(port=redis.port, decode_responses=True) as check:
            pipe = check.pipeline(transaction=False)
            for code, user in acknowledged:
                pipe.hexists(f"{{cp}}:c:{code}", f"u:{user}")
            lost = [pair for pair, kept in zip(acknowledged, pipe.execute(), strict=True) if not kept]
            assert lost == []
            allocated = int(check.hget("{cp}:stats", "STANDARD:allocated") or 0)
            assert allocated >= len(acknowledged)  # a reply lost in the kill may still have been stored
    finally:
        redis.stop()


async def test_500_concurrent_requests_are_queued_for_connections_and_all_answered(tmp_path: Path) -> None:
    redis, app = start_pair(tmp_path)  # 64 Redis connections per process (the default)
    try:
        async with httpx.AsyncClient(base_url=app.url, timeout=30) as http:
            await stock(http, "Q")
            answers = await asyncio.gather(*(raw_allocate(app.port, f"crowd-{i}") for i in range(500)))
            assert [status for status, _ in answers] == [201] * 500
            assert (await http.get("/v1/stats")).json()["types"]["STANDARD"]["allocated"] == 500
    finally:
        app.stop()
        redis.stop()


async def test_an_exhausted_pool_refuses_with_a_clear_error_and_carries_on(tmp_path: Path) -> None:
    """Two connections held by a paused Redis: the others give up waiting after the timeout."""
    redis = RedisServer(tmp_path / "redis").start()
    app = LiveServer(redis.url, REDIS_MAX_CONNECTIONS="2", REDIS_TIMEOUT_S="0.5")
    try:
        async with httpx.AsyncClient(base_url=app.url, timeout=30) as http:
            await stock(http, "E")
            with paused(redis):
                answers = await asyncio.gather(*(raw_allocate(app.port, f"wait-{i}") for i in range(500)))
            assert {status for status, _ in answers} == {503}
            details = {answer["detail"] for _, answer in answers}
            assert any("no Redis connection came free within 0.5 s" in d for d in details), details
            wait_until(lambda: httpx.get(f"{app.url}/readyz").status_code == 200)
            assert (await allocate(http, "after")).status_code == 201
    finally:
        app.stop()
        redis.stop()


def test_sigterm_ends_the_process_even_with_a_request_stuck(tmp_path: Path) -> None:
    """A request waiting for a body that never comes does not hold up the stop."""
    redis = RedisServer(tmp_path / "redis").start()
    app = LiveServer(redis.url, BODY_TIMEOUT_S="120", SHUTDOWN_TIMEOUT_S="1")
    try:
        with socket.create_connection(("127.0.0.1", app.port), timeout=10) as conn:
            conn.sendall(
                b"POST /v1/allocations HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b"Content-Length: 40\r\n\r\n"
            )
            time.sleep(0.3)  # the request is in the app, reading its body
            started = time.monotonic()
            app.process.terminate()
            app.process.wait(10)
            assert time.monotonic() - started < 5
    finally:
        app.stop()
        redis.stop()


async def test_a_server_killed_mid_request_leaves_no_half_allocation_and_its_megadeal_slots_expire(
    redis_server: RedisServer, redis: AsyncRedis
) -> None:
    """SIGKILL one app process while it holds MEGADEAL slots; another process carries on.

    Every allocation is one script call, so a kill leaves each coupon either allocated to
    a user or not: the invariant checker finds nothing, and every allocation answered 201
    before the kill is in Redis. The dead process's slots count against the limit until
    their lease ends, and no longer: with the other slots held, the survivor's MEGADEAL
    request is served when the lease runs out.
    """
    lease_s = 3.0
    limits = {"MEGADEAL_LEASE_S": str(lease_s), "MEGADEAL_RATE_PER_S": "1000", "MEGADEAL_MAX_WAIT_S": "10"}
    doomed, survivor = LiveServer(redis_server.url, **limits), LiveServer(redis_server.url, **limits)
    acknowledged: list[tuple[str, str]] = []
    try:
        async with httpx.AsyncClient(base_url=doomed.url, timeout=30) as http:
            coupons = [coupon_json(f"S{i}", max_usages=100) for i in range(100)]
            coupons += [coupon_json(f"M{i}", type="MEGADEAL", max_usages=100) for i in range(100)]
            assert (await http.post("/v1/coupons", json={"coupons": coupons})).status_code == 201

            async def client(n: int) -> None:
                for i in range(10_000):
                    user, kind = f"c{n}-{i}", "MEGADEAL" if i % 2 else "STANDARD"
                    try:
                        response = await http.post("/v1/allocations", json={"user_id": user, "type": kind})
                    except httpx.TransportError:
                        return  # the server is gone
                    if response.status_code == 201:
                        acknowledged.append((response.json()["code"], user))

            clients = [asyncio.create_task(client(n)) for n in range(40)]
            await asyncio.sleep(1.0)
            held = 0
            for _ in range(500):  # stop the server until it is caught holding a MEGADEAL slot
                doomed.process.send_signal(signal.SIGSTOP)
                await asyncio.sleep(0.02)  # commands it already sent finish in Redis
                held = await redis.zcard("{cp}:mega:slots")
                if held:
                    break
                doomed.process.send_signal(signal.SIGCONT)
                await asyncio.sleep(0.01)
            doomed.process.kill()
            doomed.process.wait(10)
            killed_at = time.monotonic()
            assert held, "the server was never caught holding a MEGADEAL slot"
            await asyncio.gather(*clients)

        holder = await asyncio.create_subprocess_exec(
            sys.executable, str(REPO / "support" / "megadeal_holder.py"),
            redis_server.url, str(5 - held), "60", "5", stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert holder.stdout is not None
            assert (await holder.stdout.readline()).strip() == b"held"  # every slot is now taken
            async with httpx.AsyncClient(base_url=survivor.url, timeout=30) as http:
                response = await http.post("/v1/allocations", json={"user_id": "after", "type": "MEGADEAL"})
                served_after = time.monotonic() - killed_at
                assert response.status_code == 201
                assert lease_s - 1.0 <= served_after <= lease_s + 1.0

                report = await check(redis, Keys("cp"))
                assert report.violations == []
                for code, user in acknowledged:
                    holders = (await http.get(f"/v1/coupons/{code}")).json()["allocations"]
                    assert user in {h["user_id"] for h in holders}
        finally:
            holder.kill()
            await holder.wait()
    finally:
        if doomed.process.poll() is None:
            doomed.process.kill()
        survivor.stop()
    assert len(acknowledged) > 100  # the kill came in the middle of real work
