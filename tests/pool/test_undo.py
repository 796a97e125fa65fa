"""Release (POST /v1/releases), rollback (POST /v1/rollbacks), a user's coupons
(GET /v1/users/{user_id}/coupons) and MAX_ALLOCATIONS_PER_USER."""

from __future__ import annotations

import asyncio
from datetime import datetime
from urllib.parse import quote

import httpx
import pytest
from redis.asyncio import Redis

from coupon_pool.errors import (
    AlreadyRedeemed,
    CouponExpired,
    NotAllocated,
    NotRedeemed,
    PoolEmpty,
    TypeMismatch,
)
from coupon_pool.http.app import create_app
from coupon_pool.models import CouponType
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from coupon_pool.settings import Settings
from coupon_pool.tools.check import check
from support.factories import coupon, coupon_json, expired_coupon

STANDARD = CouponType.STANDARD


async def test_a_release_puts_an_exhausted_coupon_back_and_counts_it(store: Store) -> None:
    await store.upload([coupon("ONE")])
    await store.allocate("alice", STANDARD)
    with pytest.raises(PoolEmpty):
        await store.allocate("bob", STANDARD)
    released = await store.release("ONE", "alice", None)
    assert (released.type, released.allocated, released.max_usages) == (STANDARD, 0, 1)
    assert (await store.allocate("bob", STANDARD)).code == "ONE"
    stats = (await store.stats()).types[STANDARD]
    assert (stats.allocated, stats.released, stats.available) == (1, 1, 0)
    assert [h.user_id for h in (await store.get_coupon("ONE")).allocations] == ["bob"]


async def test_release_refusals(store: Store) -> None:
    await store.upload([coupon("R", max_usages=2), coupon("F", type="FREE")])
    with pytest.raises(NotAllocated):
        await store.release("R", "alice", None)
    await store.allocate("alice", STANDARD)
    with pytest.raises(TypeMismatch):
        await store.release("R", "alice", CouponType.FREE)
    await store.redeem("R", "alice", None)
    with pytest.raises(AlreadyRedeemed):
        await store.release("R", "alice", None)


async def test_an_expired_coupon_released_stays_out_of_the_pool(store: Store) -> None:
    await store.upload([expired_coupon("GONE")])
    await store.redis.hset(store.keys.coupon("GONE"), mapping={"alloc": 1, "u:alice": 1})
    await store.redis.zrem(store.keys.available(STANDARD), "GONE")
    await store.redis.zadd(store.keys.exhausted, {"GONE": 1})
    await store.release("GONE", "alice", None)
    assert await store.redis.zscore(store.keys.exhausted, "GONE") == 1
    assert await store.redis.zscore(store.keys.available(STANDARD), "GONE") is None


async def test_a_rollback_makes_the_allocation_redeemable_again(store: Store) -> None:
    await store.upload([coupon("RB", max_usages=2)])
    await store.allocate("alice", STANDARD)
    await store.redeem("RB", "alice", None)
    undone = await store.rollback("RB", "alice", STANDARD)
    assert (undone.used, undone.max_usages) == (0, 2)
    with pytest.raises(NotRedeemed):
        await store.rollback("RB", "alice", None)
    assert (await store.redeem("RB", "alice", None)).used == 1
    stats = (await store.stats()).types[STANDARD]
    assert (stats.used, stats.rolled_back) == (1, 1)


async def test_a_rollback_after_expiry_is_refused(store: Store) -> None:
    await store.upload([expired_coupon("OLD")])
    await store.redis.hset(store.keys.coupon("OLD"), mapping={"alloc": 1, "used": 1, "u:alice": "1:2"})
    with pytest.raises(CouponExpired):
        await store.rollback("OLD", "alice", None)


async def test_release_and_rollback_race_allocation_and_redemption(redis: Redis) -> None:
    """Many users take, use, give back and undo the same few coupons at once: the data keeps
    every rule (check) and the counters add up."""
    store = Store(redis, Keys("cp"))
    await store.prepare()
    await store.upload([coupon(f"HOT{i}", max_usages=3) for i in range(3)])

    async def user(n: int) -> None:
        name = f"u{n}"
        for _ in range(30):
            try:
                code = (await store.allocate(name, STANDARD)).code
            except PoolEmpty:
                await asyncio.sleep(0)
                continue
            if n % 2:
                await store.redeem(code, name, None)
                await store.rollback(code, name, None)
            await store.release(code, name, None)

    await asyncio.gather(*(user(n) for n in range(20)))
    report = await check(redis, store.keys)
    assert report.violations == []
    stats = (await store.stats()).types[STANDARD]
    assert (stats.allocated, stats.used, stats.available) == (0, 0, 3)  # everything was given back
    assert stats.released > 0
    assert stats.rolled_back > 0


async def test_a_users_coupons_newest_first_with_statuses_and_pages(client: httpx.AsyncClient) -> None:
    coupons = [coupon_json(f"U{i}", max_usages=2) for i in range(5)]
    assert (await client.post("/v1/coupons", json={"coupons": coupons})).status_code == 201
    user = "svc/orders#1"  # a user id needs percent-encoding in the path
    codes, allocated_at = [], {}
    for _ in range(5):
        answer = (await client.post("/v1/allocations", json={"user_id": user})).json()
        codes.append(answer["code"])
        allocated_at[answer["code"]] = datetime.fromisoformat(answer["allocated_at"])
    await client.post("/v1/redemptions", json={"code": codes[1], "user_id": user})
    await client.post("/v1/releases", json={"code": codes[3], "user_id": user})
    # Newest first, then the greater code first (two allocations may share a millisecond).
    listed = sorted((c for c in codes if c != codes[3]), key=lambda c: (allocated_at[c], c), reverse=True)
    path = f"/v1/users/{quote(user, safe='')}/coupons"
    first = (await client.get(path, params={"limit": 2})).json()
    assert [c["code"] for c in first["coupons"]] == listed[:2]
    assert first["next"] is not None
    second = (await client.get(path, params={"limit": 2, "after": first["next"]})).json()
    assert [c["code"] for c in second["coupons"]] == listed[2:]
    statuses = {
        c["code"]: (c["status"], c["redeemed_at"] is not None) for c in second["coupons"] + first["coupons"]
    }
    assert statuses == {c: (("redeemed", True) if c == codes[1] else ("allocated", False)) for c in listed}
    assert second["next"] is None
    assert (await client.get(path, params={"after": "x"})).status_code == 422
    empty = (await client.get("/v1/users/nobody/coupons")).json()
    assert empty == {"coupons": [], "next": None}


async def test_a_users_coupons_cursor_is_ms_dot_code_and_nothing_else(client: httpx.AsyncClient) -> None:
    assert (
        await client.get("/v1/users/u/coupons", params={"after": "1700000000000.A-b_9"})
    ).status_code == 200
    for after in ("x", "1", "1.", ".A", "01.A", "1..A", "1.A.B", "1.A B", "-1.A", "1e3.A", "1_0.A", " 1.A",
                  "1000000000000000.A", "1." + "A" * 65, "1.A%"):  # fmt: skip
        response = await client.get("/v1/users/u/coupons", params={"after": after})
        assert response.status_code == 422, after
        assert [e["field"] for e in response.json()["errors"]] == ["after"], after


async def test_paging_goes_on_when_the_cursors_coupon_is_released(store: Store) -> None:
    await store.upload([coupon(f"P{i}", max_usages=2) for i in range(6)])
    for _ in range(6):
        await store.allocate("u", STANDARD)
    first = await store.user_coupons("u", 3, None)
    await store.release(first.coupons[-1].code, "u", None)
    second = await store.user_coupons("u", 3, first.next)
    seen = [c.code for c in first.coupons] + [c.code for c in second.coupons]
    assert sorted(seen) == [f"P{i}" for i in range(6)]


async def test_the_per_user_limit_refuses_one_more_until_a_release(redis: Redis, settings: Settings) -> None:
    app = create_app(Settings(redis_url=settings.redis_url, max_allocations_per_user=2))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        coupons = [coupon_json(f"L{i}") for i in range(4)] + [coupon_json("M1", type="MEGADEAL")]
        await http.post("/v1/coupons", json={"coupons": coupons})
        got = [(await http.post("/v1/allocations", json={"user_id": "a"})).json()["code"] for _ in range(2)]
        refused = await http.post("/v1/allocations", json={"user_id": "a"})
        assert (refused.status_code, refused.json()["code"]) == (409, "user_limit_reached")
        assert (await http.post("/v1/allocations", json={"user_id": "b"})).status_code == 201
        assert (
            await http.post("/v1/allocations", json={"user_id": "a", "type": "MEGADEAL"})
        ).status_code == 201
        await http.post("/v1/releases", json={"code": got[0], "user_id": "a"})
        assert (await http.post("/v1/allocations", json={"user_id": "a"})).status_code == 201


async def test_releases_and_rollbacks_are_in_the_audit_trail(store: Store) -> None:
    await store.upload([coupon("AU", max_usages=2)])
    await store.allocate("alice", STANDARD)
    await store.redeem("AU", "alice", None)
    await store.rollback("AU", "alice", None)
    await store.release("AU", "alice", None)
    with pytest.raises(NotAllocated):
        await store.release("AU", "alice", None)
    entries = (await store.audit(10, None)).entries
    ops = [(e.op, getattr(e, "used", None), getattr(e, "allocated", None), getattr(e, "error", None))
           for e in entries[-3:]]  # fmt: skip
    assert ops == [
        ("rollback", 0, None, None),
        ("release", None, 0, None),
        ("release", None, None, "not_allocated"),
    ]
