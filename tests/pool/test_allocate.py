"""POST /v1/allocations and Store.allocate."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from coupon_pool.errors import PoolEmpty
from coupon_pool.models import CouponType
from coupon_pool.pool.store import Store
from support.factories import coupon, coupon_json, expired_coupon


async def test_allocation_hands_out_a_coupon_of_the_requested_type(store: Store) -> None:
    await store.upload([coupon("S1"), coupon("F1", type="FREE")])
    allocation = await store.allocate("alice", CouponType.FREE)
    assert (allocation.code, allocation.type, allocation.user_id) == ("F1", CouponType.FREE, "alice")


async def test_the_coupon_that_expires_first_goes_first(store: Store) -> None:
    await store.upload([coupon("LATE", expires_in=7200), coupon("SOON", expires_in=600)])
    assert (await store.allocate("a", CouponType.STANDARD)).code == "SOON"
    assert (await store.allocate("b", CouponType.STANDARD)).code == "LATE"


async def test_expired_coupon_is_never_allocated(store: Store) -> None:
    await store.upload([expired_coupon("OLD"), expired_coupon("OLDER", ago=3600)])
    with pytest.raises(PoolEmpty):
        await store.allocate("alice", CouponType.STANDARD)


async def test_a_multi_use_coupon_goes_to_distinct_users_up_to_its_limit(store: Store) -> None:
    await store.upload([coupon("MULTI", max_usages=3)])
    users = ["u1", "u2", "u3"]
    assert [(await store.allocate(u, CouponType.STANDARD)).code for u in users] == ["MULTI"] * 3
    with pytest.raises(PoolEmpty):
        await store.allocate("u4", CouponType.STANDARD)
    assert (await store.get_coupon("MULTI")).allocated == 3


async def test_a_coupon_moves_to_the_exhausted_set_with_its_last_usage(store: Store) -> None:
    await store.upload([coupon("PAIR", max_usages=2)])
    available, exhausted = store.keys.available(CouponType.STANDARD), store.keys.exhausted
    expires_ms = await store.redis.zscore(available, "PAIR")

    await store.allocate("u1", CouponType.STANDARD)
    assert (await store.redis.zscore(available, "PAIR"), await store.redis.zscore(exhausted, "PAIR")) == (
        expires_ms,
        None,
    )
    await store.allocate("u2", CouponType.STANDARD)
    assert (await store.redis.zscore(available, "PAIR"), await store.redis.zscore(exhausted, "PAIR")) == (
        None,
        expires_ms,
    )


async def test_a_user_never_gets_the_same_coupon_twice(store: Store) -> None:
    await store.upload([coupon("MULTI", max_usages=5)])
    await store.allocate("alice", CouponType.STANDARD)
    with pytest.raises(PoolEmpty):
        await store.allocate("alice", CouponType.STANDARD)


async def test_a_user_holding_many_coupons_still_finds_the_next_one(store: Store) -> None:
    # The script scans in growing batches (1, 4, 16, 64, 64): the 100th allocation must look
    # past 99 held coupons, through every batch size and the cap.
    await store.upload([coupon(f"M{i:03d}", max_usages=2, expires_in=600 + i) for i in range(100)])
    held = [(await store.allocate("alice", CouponType.STANDARD)).code for _ in range(100)]
    assert held == [f"M{i:03d}" for i in range(100)]  # each time the first one not held
    with pytest.raises(PoolEmpty):
        await store.allocate("alice", CouponType.STANDARD)
    assert (await store.allocate("bob", CouponType.STANDARD)).code == "M000"


async def test_allocation_counts_by_type(store: Store) -> None:
    await store.upload([coupon("A"), coupon("B"), coupon("M", type="MEGADEAL")])
    await store.allocate("u", CouponType.STANDARD)
    stats = await store.stats()
    assert stats.types[CouponType.STANDARD].allocated == 1
    assert stats.types[CouponType.STANDARD].available == 1
    assert stats.types[CouponType.MEGADEAL].allocated == 0


async def test_allocate_over_http_answers_201_with_the_coupon(client: httpx.AsyncClient) -> None:
    await client.post(
        "/v1/coupons", json={"coupons": [coupon_json("C1", discount={"kind": "percent", "value": 20})]}
    )
    response = await client.post("/v1/allocations", json={"user_id": "user-1@example.com"})
    assert response.status_code == 201
    body = response.json()
    assert body["code"] == "C1"
    assert body["type"] == "STANDARD"
    assert body["discount"] == {"kind": "percent", "value": 20}
    assert body["user_id"] == "user-1@example.com"
    assert body["allocated_at"].endswith("Z")
    assert body["expires_at"].endswith("Z")


async def test_empty_pool_is_409_pool_empty(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/allocations", json={"user_id": "u", "type": "MEGADEAL"})
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "pool_empty"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "user_id"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "has space"}, "user_id"),
        ({"user_id": "caf\u00e9"}, "user_id"),
        ({"user_id": "x" * 129}, "user_id"),
        ({"user_id": 42}, "user_id"),
        ({"user_id": "u", "type": "GOLD"}, "type"),
        ({"user_id": "u", "type": "standard"}, "type"),
        ({"user_id": "u", "extra": 1}, "extra"),
    ],
)
async def test_bad_allocation_requests_are_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    response = await client.post("/v1/allocations", json=body)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert [e["field"] for e in response.json()["errors"]] == [field]


async def test_concurrent_allocations_never_share_a_single_use_coupon(store: Store) -> None:
    await store.upload([coupon(f"C{i}") for i in range(50)])
    results = await asyncio.gather(
        *(store.allocate(f"u{i}", CouponType.STANDARD) for i in range(80)), return_exceptions=True
    )
    codes = [r.code for r in results if not isinstance(r, BaseException)]
    assert sorted(codes) == sorted(f"C{i}" for i in range(50))
    assert sum(isinstance(r, PoolEmpty) for r in results) == 30
