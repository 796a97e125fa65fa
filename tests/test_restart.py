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

import httpx
import pytest
from conftest import LiveServer, RedisServer
from factories import coupon_json
from redis import Redis as SyncRedis


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
