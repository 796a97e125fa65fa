"""Concurrency over real HTTP against `coupon-pool serve` in a subprocess."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
from redis.asyncio import Redis

from support.factories import coupon_json
from support.live_server import LiveServer


async def test_200_concurrent_allocations_for_100_coupons(live_server: LiveServer, redis: Redis) -> None:
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=live_server.url, limits=limits, timeout=30) as http:
        coupons = [coupon_json(f"C{i:03d}") for i in range(100)]
        assert (await http.post("/v1/coupons", json={"coupons": coupons})).status_code == 201
        responses = await asyncio.gather(
            *(http.post("/v1/allocations", json={"user_id": f"user-{i}"}) for i in range(200))
        )
        stats = (await http.get("/v1/stats")).json()["types"]["STANDARD"]
    statuses = Counter(r.status_code for r in responses)
    codes = [r.json()["code"] for r in responses if r.status_code == 201]
    assert statuses == {201: 100, 409: 100}
    assert sorted(codes) == [f"C{i:03d}" for i in range(100)]
    assert all(r.json()["code"] == "pool_empty" for r in responses if r.status_code == 409)
    assert (stats["allocated"], stats["available"]) == (100, 0)


async def test_concurrent_double_redemption_over_http(live_server: LiveServer, redis: Redis) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        await http.post("/v1/coupons", json={"coupons": [coupon_json("ONCE")]})
        await http.post("/v1/allocations", json={"user_id": "alice"})
        body = {"code": "ONCE", "user_id": "alice"}
        responses = await asyncio.gather(*(http.post("/v1/redemptions", json=body) for _ in range(10)))
        coupon = (await http.get("/v1/coupons/ONCE")).json()
    assert Counter(r.status_code for r in responses) == {201: 1, 409: 9}
    assert coupon["used"] == 1
