"""Allocation with the per-user held sets (lib.lua: reserve_first_unheld), against a model.

The rule: a user gets the first-expiring unexpired coupon of the type (ties by code) with
a free usage that they do not hold. The held sets only make that cheap; these tests drive
them into every state they can be in (gaps from later uploads and releases, entries made
stale by other users exhausting a coupon, entries missing after a coupon came back to the
pool) and compare every answer with the rule computed in Python.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from coupon_pool.errors import NotAllocated, PoolEmpty
from coupon_pool.models import CouponType
from coupon_pool.pool.codec import to_ms
from coupon_pool.pool.store import Store
from support.factories import coupon

STANDARD = CouponType.STANDARD


@dataclass
class Model:
    """The pool as the rule sees it: code -> (expires_at ms, max usages, holders)."""

    coupons: dict[str, tuple[int, int, set[str]]] = field(default_factory=dict)

    def allocate(self, user: str) -> str | None:
        free = [
            (exp, code)
            for code, (exp, most, holders) in self.coupons.items()
            if len(holders) < most and user not in holders
        ]
        if not free:
            return None
        code = min(free)[1]
        self.coupons[code][2].add(user)
        return code


async def upload(store: Store, model: Model, codes: list[str], rng: random.Random) -> None:
    batch = []
    for code in codes:
        c = coupon(code, expires_in=3600 + rng.randrange(0, 50) * 60, max_usages=rng.choice([1, 2, 3, 5]))
        model.coupons[code] = (to_ms(c.expires_at), c.max_usages, set())
        batch.append(c)
    await store.upload(batch)


@pytest.mark.parametrize("seed", range(6))
async def test_allocations_follow_the_rule_through_uploads_releases_and_other_users(
    store: Store, seed: int
) -> None:
    rng = random.Random(seed)
    model = Model()
    users = ["heavy", "u1", "u2", "u3"]
    await upload(store, model, [f"C{i:03d}" for i in range(60)], rng)
    next_code = 60
    for _ in range(400):
        action = rng.random()
        if action < 0.1:  # a later upload: coupons that may sort before what users hold
            await upload(store, model, [f"C{next_code + i:03d}" for i in range(5)], rng)
            next_code += 5
        elif action < 0.25:  # someone gives a coupon back: it may return to the pool
            holdings = [(u, c) for c, (_, _, hs) in model.coupons.items() for u in hs]
            if holdings:
                user, code = rng.choice(holdings)
                await store.release(code, user, None)
                model.coupons[code][2].discard(user)
        else:
            user = "heavy" if action < 0.7 else rng.choice(users)
            expected = model.allocate(user)
            if expected is None:
                with pytest.raises(PoolEmpty):
                    await store.allocate(user, STANDARD)
            else:
                assert (await store.allocate(user, STANDARD)).code == expected


async def test_a_user_holding_many_multi_use_coupons_still_gets_the_next_one(store: Store) -> None:
    await store.upload([coupon(f"M{i:04d}", max_usages=5) for i in range(500)])
    codes = [(await store.allocate("service", STANDARD)).code for _ in range(500)]
    assert codes == [f"M{i:04d}" for i in range(500)]
    with pytest.raises(PoolEmpty):
        await store.allocate("service", STANDARD)
    # A later coupon expiring sooner than all of them is next, then nothing again.
    await store.upload([coupon("EARLY", expires_in=60)])
    assert (await store.allocate("service", STANDARD)).code == "EARLY"
    with pytest.raises(PoolEmpty):
        await store.allocate("service", STANDARD)


async def test_a_light_user_is_not_listed_until_their_ninth_coupon(store: Store) -> None:
    await store.upload([coupon(f"L{i}", max_usages=3) for i in range(10)])
    held = store.keys.held(STANDARD, "light")
    for i in range(8):
        assert (await store.allocate("light", STANDARD)).code == f"L{i}"
    assert await store.redis.zcard(held) == 0
    assert not await store.redis.exists(store.keys.tracked_prefix + "L0")
    assert (await store.allocate("light", STANDARD)).code == "L8"
    assert await store.redis.zcard(held) == 9


async def test_a_coupon_exhausted_by_another_user_leaves_its_holders_held_sets(store: Store) -> None:
    await store.upload([coupon(f"P{i:03d}", max_usages=2) for i in range(100)])
    for _ in range(100):
        await store.allocate("a", STANDARD)
    held = store.keys.held(STANDARD, "a")
    # A user's first 8 coupons of a type are not listed at first; the ninth allocation's
    # search meets them as held but unlisted, and lists them.
    assert await store.redis.zcard(held) == 100
    for _ in range(100):  # b exhausts every one of them
        await store.allocate("b", STANDARD)
    assert await store.redis.zcard(held) == 0
    assert not await store.redis.exists(*(store.keys.tracked_prefix + f"P{i:03d}" for i in range(100)))
    await store.upload([coupon("NEXT", expires_in=7200)])
    assert (await store.allocate("a", STANDARD)).code == "NEXT"


async def test_a_coupon_of_many_listed_holders_drains_over_later_allocations(store: Store) -> None:
    """Its last usage leaves it in the available set, set aside by every search, until the
    allocations after it have taken it out of its holders' held sets, 64 at a time."""
    users = [f"u{i:03d}" for i in range(150)]
    await store.upload([coupon(f"F{i}", max_usages=500, expires_in=60) for i in range(8)])
    await store.upload([coupon("BIG", max_usages=151, expires_in=120), coupon("AFTER", max_usages=10_000)])
    for user in users:  # 8 coupons each first, so BIG is listed in every held set
        for _ in range(9):
            await store.allocate(user, STANDARD)
    tracked = store.keys.tracked_prefix + "BIG"
    assert await store.redis.scard(tracked) == 150
    for _ in range(9):
        await store.allocate("last", STANDARD)  # F0-F7, then BIG: its last usage
    draining = store.keys.draining(STANDARD)
    assert await store.redis.zrange(draining, 0, -1) == ["BIG"]
    assert await store.redis.scard(tracked) == 150 - 64  # 64 cleaned at once
    assert (await store.stats()).types[STANDARD].available == 8 + 1  # F0-F7 and AFTER, not BIG
    assert (await store.allocate("fresh", STANDARD)).code == "F0"  # an allocation: 64 more
    assert await store.redis.scard(tracked) == 150 - 128
    assert await store.redis.zrange(draining, 0, -1) == ["BIG"]
    assert (await store.allocate("u000", STANDARD)).code == "AFTER"  # BIG set aside; the rest cleaned
    assert await store.redis.zrange(draining, 0, -1) == []
    assert await store.redis.zscore(store.keys.exhausted, "BIG") is not None
    assert await store.redis.zscore(store.keys.available(STANDARD), "BIG") is None
    assert all([await store.redis.zscore(store.keys.held(STANDARD, u), "BIG") is None for u in users])


async def test_releasing_a_draining_coupon_makes_it_available_again(store: Store) -> None:
    await store.upload([coupon(f"F{i}", max_usages=100, expires_in=60) for i in range(8)])
    await store.upload([coupon("BIG", max_usages=70, expires_in=120)])
    for i in range(70):
        for _ in range(9):
            await store.allocate(f"u{i}", STANDARD)
    draining = store.keys.draining(STANDARD)
    assert await store.redis.zrange(draining, 0, -1) == ["BIG"]
    await store.release("BIG", "u5", None)
    assert await store.redis.zrange(draining, 0, -1) == []
    assert (await store.allocate("u5", STANDARD)).code == "BIG"


async def test_a_released_coupon_can_be_allocated_to_the_same_user_again(store: Store) -> None:
    await store.upload([coupon("ONLY", max_usages=1)])
    await store.allocate("a", STANDARD)
    await store.release("ONLY", "a", None)
    assert (await store.allocate("a", STANDARD)).code == "ONLY"
    await store.release("ONLY", "a", STANDARD)
    with pytest.raises(NotAllocated):
        await store.release("ONLY", "a", STANDARD)
