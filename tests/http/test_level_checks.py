"""Pool-low events through the app: its loop (POOL_LOW_INTERVAL_S) records one pool_low when
a type falls below its threshold and one pool_recovered after an upload, seen in
GET /v1/audit, GET /v1/levels and /metrics; on one Redis and on a sharded pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from coupon_pool.pool.keys import Keys, LevelField
from support.factories import coupon_json
from support.redis_server import RedisServer
from tests.http.conftest import app_on

DEADLINE_S = 20.0


class App:
    def __init__(self, http: httpx.AsyncClient, redis: Redis) -> None:
        self.http, self.redis = http, redis

    async def upload(self, first: int, count: int) -> None:
        coupons = [coupon_json(f"LOW-{i}", type="STANDARD") for i in range(first, first + count)]
        answer = await self.http.post("/v1/coupons", json={"coupons": coupons})
        assert answer.status_code == 201, answer.text

    async def allocate(self, count: int) -> None:
        for i in range(count):
            answer = await self.http.post("/v1/allocations", json={"user_id": f"u-{i}"})
            assert answer.status_code == 201, answer.text

    async def level_entries(self) -> list[dict[str, Any]]:
        entries = (await self.http.get("/v1/audit", params={"limit": 1000})).json()["entries"]
        return [e for e in entries if e["op"] in ("pool_low", "pool_recovered")]

    async def until(self, op: str) -> list[dict[str, Any]]:
        """The pool-low entries once ``op`` is among them (polled, up to DEADLINE_S)."""
        async with asyncio.timeout(DEADLINE_S):
            while True:
                entries = await self.level_entries()
                if any(e["op"] == op for e in entries):
                    return entries
                await asyncio.sleep(0.05)

    async def checks(self) -> int:
        return int(await self.redis.hget(Keys("cp").levels, LevelField.TICKET) or 0)

    async def more_checks(self, count: int) -> None:
        """Until the loop has checked ``count`` times more."""
        target = await self.checks() + count
        async with asyncio.timeout(DEADLINE_S):
            while True:
                if await self.checks() >= target:
                    return
                await asyncio.sleep(0.05)


@pytest.fixture(params=["redis-server", "cluster"])
async def app(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[App]:
    low = {"pool_low_standard": "3", "pool_low_interval_s": 0.1}
    async with app_on(request, redis_server, **low) as (http, redis, _):
        yield App(http, redis)


async def test_the_loop_fires_pool_low_once_and_pool_recovered_once_after_an_upload(app: App) -> None:
    await app.upload(0, 5)
    await app.more_checks(2)
    await app.allocate(3)  # 2 left, below 3

    entries = await app.until("pool_low")
    assert [{k: e[k] for k in ("op", "type", "available", "threshold")} for e in entries] == [
        {"op": "pool_low", "type": "STANDARD", "available": 2, "threshold": 3}
    ]
    levels = (await app.http.get("/v1/levels")).json()["types"]
    assert levels["STANDARD"] == {"low": True, "available": 2, "threshold": 3}
    assert levels["FREE"] == {"low": False, "available": None, "threshold": None}
    metrics = (await app.http.get("/metrics")).text
    assert 'coupon_pool_pool_low{type="STANDARD"} 1.0' in metrics
    assert 'coupon_pool_pool_low{type="FREE"} 0.0' in metrics

    await app.more_checks(5)  # staying low: nothing more
    assert len(await app.level_entries()) == 1

    await app.upload(5, 4)
    entries = await app.until("pool_recovered")
    await app.more_checks(5)
    assert [(e["op"], e["available"]) for e in await app.level_entries()] == [
        ("pool_low", 2),
        ("pool_recovered", 6),
    ]
    assert 'coupon_pool_pool_low{type="STANDARD"} 0.0' in (await app.http.get("/metrics")).text
    assert (await app.http.get("/v1/levels")).json()["types"]["STANDARD"]["low"] is False
