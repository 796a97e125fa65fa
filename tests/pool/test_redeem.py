"""POST /v1/redemptions and Store.redeem."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from coupon_pool.errors import (
    AlreadyRedeemed,
    CouponExpired,
    CouponNotFound,
    NotAllocated,
    TypeMismatch,
)
from coupon_pool.models import CouponType
from coupon_pool.pool.store import Store
from support.factories import coupon, coupon_json, expired_coupon


async def test_redeeming_an_allocated_coupon_counts_its_use(store: Store) -> None:
    await store.upload([coupon("C", type="FREE", max_usages=2)])
    await store.allocate("alice", CouponType.FREE)
    redemption = await store.redeem("C", "alice", CouponType.FREE)
    assert (redemption.code, redemption.type, redemption.used, redemption.max_usages) == (
        "C", CouponType.FREE, 1, 2,
    )  # fmt: skip
    assert (await store.stats()).types[CouponType.FREE].used == 1


async def test_type_is_optional_on_redemption(store: Store) -> None:
    await store.upload([coupon("C", type="FREE")])
    await store.allocate("alice", CouponType.FREE)
    assert (await store.redeem("C", "alice", None)).type is CouponType.FREE


async def test_unknown_code_is_coupon_not_found(store: Store) -> None:
    with pytest.raises(CouponNotFound):
        await store.redeem("NOPE", "alice", None)


async def test_wrong_type_is_type_mismatch(store: Store) -> None:
    await store.upload([coupon("C")])
    await store.allocate("alice", CouponType.STANDARD)
    with pytest.raises(TypeMismatch):
        await store.redeem("C", "alice", CouponType.FREE)


async def test_a_user_without_the_allocation_is_not_allocated(store: Store) -> None:
    await store.upload([coupon("C", max_usages=2)])
    await store.allocate("alice", CouponType.STANDARD)
    with pytest.raises(NotAllocated):
        await store.redeem("C", "bob", None)


async def test_a_second_redemption_by_the_same_user_is_already_redeemed(store: Store) -> None:
    await store.upload([coupon("C")])
    await store.allocate("alice", CouponType.STANDARD)
    await store.redeem("C", "alice", None)
    with pytest.raises(AlreadyRedeemed):
        await store.redeem("C", "alice", None)
    assert (await store.get_coupon("C")).used == 1


async def test_an_expired_coupon_is_coupon_expired(store: Store) -> None:
    await store.upload([coupon("C", expires_in=0.3)])
    await store.allocate("alice", CouponType.STANDARD)
    await asyncio.sleep(0.4)
    with pytest.raises(CouponExpired):
        await store.redeem("C", "alice", None)
    assert (await store.stats()).types[CouponType.STANDARD].used == 0


async def test_an_expired_coupon_nobody_holds_is_still_found(store: Store) -> None:
    await store.upload([expired_coupon("OLD")])
    with pytest.raises(NotAllocated):
        await store.redeem("OLD", "alice", None)


async def test_of_two_concurrent_identical_redemptions_exactly_one_wins(store: Store) -> None:
    await store.upload([coupon("C")])
    await store.allocate("alice", CouponType.STANDARD)
    results = await asyncio.gather(
        *(store.redeem("C", "alice", None) for _ in range(20)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert sum(isinstance(r, AlreadyRedeemed) for r in results) == 19
    assert (await store.get_coupon("C")).used == 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"code": "NOPE", "user_id": "alice"}, 404, "coupon_not_found"),
        ({"code": "C", "user_id": "alice", "type": "FREE"}, 409, "type_mismatch"),
        ({"code": "C", "user_id": "bob"}, 409, "not_allocated"),
        ({"code": "C", "user_id": "alice", "type": "STANDARD"}, 201, None),
        ({"code": "bad code!", "user_id": "alice"}, 422, "validation_error"),
        ({"user_id": "alice"}, 422, "validation_error"),
    ],
)
async def test_redeem_over_http(
    client: httpx.AsyncClient, body: dict[str, str], status: int, code: str | None
) -> None:
    await client.post("/v1/coupons", json={"coupons": [coupon_json("C")]})
    await client.post("/v1/allocations", json={"user_id": "alice"})
    response = await client.post("/v1/redemptions", json=body)
    assert response.status_code == status
    if code:
        assert response.json()["code"] == code
    else:
        assert response.json()["used"] == 1
        assert response.json()["redeemed_at"].endswith("Z")


async def test_expired_and_already_redeemed_over_http(client: httpx.AsyncClient) -> None:
    await client.post("/v1/coupons", json={"coupons": [coupon_json("C"), coupon_json("E", expires_in=0.3)]})
    await client.post("/v1/allocations", json={"user_id": "alice"})
    await client.post("/v1/allocations", json={"user_id": "alice"})
    await client.post("/v1/redemptions", json={"code": "C", "user_id": "alice"})
    again = await client.post("/v1/redemptions", json={"code": "C", "user_id": "alice"})
    await asyncio.sleep(0.4)
    expired = await client.post("/v1/redemptions", json={"code": "E", "user_id": "alice"})
    assert (again.status_code, again.json()["code"]) == (409, "already_redeemed")
    assert (expired.status_code, expired.json()["code"]) == (410, "coupon_expired")
