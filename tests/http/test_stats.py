"""GET /v1/stats and GET /v1/coupons/{code}: counters by type, totals, one coupon's counts."""

from __future__ import annotations

import httpx

from coupon_pool.models import CouponType
from coupon_pool.pool.store import Store
from support.factories import coupon, coupon_json, expired_coupon


async def test_stats_count_created_allocated_used_and_available_per_type(client: httpx.AsyncClient) -> None:
    coupons = [coupon_json("S1"), coupon_json("S2"), coupon_json("F1", type="FREE", max_usages=2)]
    await client.post("/v1/coupons", json={"coupons": coupons})
    # Which STANDARD coupon each user gets depends on the shard tried first: use what they got.
    held_by_a = (await client.post("/v1/allocations", json={"user_id": "a"})).json()["code"]
    await client.post("/v1/allocations", json={"user_id": "a", "type": "FREE"})
    await client.post("/v1/redemptions", json={"code": "F1", "user_id": "a"})
    held_by_b = (await client.post("/v1/allocations", json={"user_id": "b"})).json()["code"]
    assert {held_by_a, held_by_b} == {"S1", "S2"}
    changes = [
        ("/v1/releases", held_by_b, "b"),
        ("/v1/redemptions", held_by_a, "a"),
        ("/v1/rollbacks", held_by_a, "a"),
    ]
    for path, code, user in changes:
        assert (await client.post(path, json={"code": code, "user_id": user})).status_code == 201
    stats = (await client.get("/v1/stats")).json()
    zero = {
        "released": 0,
        "rolled_back": 0,
        "purged": 0,
        "held": 0,
        "hold_expired": 0,
        "scheduled": 0,
        "disabled": 0,
    }
    assert stats == {
        "types": {
            "FREE": {**zero, "created": 1, "allocated": 1, "used": 1, "available": 1},
            "STANDARD": {**zero, "created": 2, "allocated": 1, "used": 0, "released": 1, "rolled_back": 1,
                         "available": 1},
            "MEGADEAL": {**zero, "created": 0, "allocated": 0, "used": 0, "available": 0},
        },
        "totals": {**zero, "created": 3, "allocated": 2, "used": 1, "released": 1, "rolled_back": 1,
                   "available": 2},
    }  # fmt: skip


async def test_expired_coupons_are_not_counted_as_available(store: Store) -> None:
    await store.upload([coupon("NEW"), expired_coupon("OLD")])
    standard = (await store.stats()).types[CouponType.STANDARD]
    assert (standard.created, standard.available) == (2, 1)


async def test_a_coupon_shows_its_allocated_and_used_counts(client: httpx.AsyncClient) -> None:
    await client.post("/v1/coupons", json={"coupons": [coupon_json("M", max_usages=3)]})
    for user in ("a", "b"):
        await client.post("/v1/allocations", json={"user_id": user})
    await client.post("/v1/redemptions", json={"code": "M", "user_id": "b"})
    body = (await client.get("/v1/coupons/M")).json()
    assert (body["max_usages"], body["allocated"], body["used"]) == (3, 2, 1)
