"""A Redis restart costs no request once Redis answers again.

Pooled connections to the old Redis process are closed by it; a call must not be sent on
one. And a call that fails where it may have run is sent again only with an
Idempotency-Key (its script replays the first answer if it had run).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis as SyncRedis
from redis.exceptions import TimeoutError as RedisTimeoutError

from coupon_pool.models import CouponType
from coupon_pool.pool.connection import connect
from coupon_pool.pool.keyed import Idempotency
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from coupon_pool.settings import Settings
from support.factories import coupon, coupon_json
from support.live_server import LiveServer
from support.redis_server import RedisServer


def restart(redis: RedisServer, how: str) -> None:
    assert redis.process is not None
    if how == "SIGTERM":  # a clean shutdown: Redis saves, then exits
        os.kill(redis.process.pid, signal.SIGTERM)
        redis.process.wait(10)
    else:
        redis.kill()
    redis.start()  # same port and directory; start() returns once it answers PING
    with SyncRedis(port=redis.port) as client:
        assert client.ping()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_no_request_fails_after_a_restart_once_redis_answers(tmp_path: Path, how: str) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    # Several workers' worth of pooled connections: each one open when Redis goes away.
    app = LiveServer(redis.url, REDIS_TIMEOUT_S="1")
    try:
        async with httpx.AsyncClient(base_url=app.url, timeout=10) as http:
            coupons = [coupon_json(f"R{i}", max_usages=10_000) for i in range(3)]
            assert (await http.post("/v1/coupons", json={"coupons": coupons})).status_code == 201

            async def burst(tag: str) -> list[int]:
                answers = []
                for i in range(20):  # sequential and concurrent, to use several pooled connections
                    answers.append(
                        (await http.post("/v1/allocations", json={"user_id": f"{tag}{i}"})).status_code
                    )
                allocated = await http.post("/v1/allocations", json={"user_id": f"{tag}-r"})
                redeemed = await http.post(
                    "/v1/redemptions", json={"code": allocated.json()["code"], "user_id": f"{tag}-r"}
                )
                answers += [
                    allocated.status_code,
                    redeemed.status_code,
                    (await http.get("/v1/stats")).status_code,
                ]
                return answers

            for round_ in range(3):
                before = await asyncio.gather(*(burst(f"b{round_}-{n}-") for n in range(8)))
                assert {s for answers in before for s in answers} <= {200, 201}
                restart(redis, how)
                after = await asyncio.gather(*(burst(f"a{round_}-{n}-") for n in range(8)))
                assert [s for answers in after for s in answers if s >= 300] == []
    finally:
        app.stop()
        redis.stop()


async def test_a_keyed_call_cut_off_by_a_pause_is_sent_again_and_runs_once(tmp_path: Path) -> None:
    """Redis stops (SIGSTOP) with a call under way: the call times out, and may still run when
    Redis resumes. A keyed allocation is sent once more and gets the one answer; an unkeyed one
    is a timeout (its outcome unknown), never sent twice."""
    redis = RedisServer(tmp_path / "redis").start()
    client = connect(Settings(redis_url=redis.url, redis_timeout_s=0.3), 8, 0.3)
    store = Store(client, Keys("cp"))
    try:
        await store.prepare()
        await store.upload([coupon("ONLY", max_usages=10)])
        assert redis.process is not None
        loop = asyncio.get_running_loop()
        record = store.keys.idempotency("open", "k")

        os.kill(redis.process.pid, signal.SIGSTOP)
        loop.call_later(0.45, os.kill, redis.process.pid, signal.SIGCONT)
        keyed = await store.keyed(
            Idempotency(record, "f" * 32, 60_000), store.allocate("u", CouponType.STANDARD)
        )
        assert keyed.value.code == "ONLY"
        assert [h.user_id for h in (await store.get_coupon("ONLY")).allocations] == ["u"]
        assert await audited(client, "u") == 1  # the script ran once; the call sent again replayed

        os.kill(redis.process.pid, signal.SIGSTOP)
        loop.call_later(0.45, os.kill, redis.process.pid, signal.SIGCONT)
        with pytest.raises(RedisTimeoutError):
            await store.allocate("v", CouponType.STANDARD)
        await asyncio.sleep(0.3)
        # Sent once: it ran when Redis resumed, or never; a second run would have left a
        # second audit entry (pool_empty: v holds ONLY already).
        assert await audited(client, "v") <= 1
    finally:
        await client.aclose()
        redis.stop()


async def audited(client: Any, user: str) -> int:
    """How many allocation script runs for ``user`` the audit trail records."""
    entries = await client.xrange(Keys("cp").audit)
    return sum(1 for _, fields in entries if fields.get("op") == "allocate" and fields.get("user_id") == user)
