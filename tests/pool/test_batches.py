"""Batches in the store (issue 25): every upload joins a batch; a batch or a coupon is
disabled and enabled; a batch's cap of redemptions; the tidy job. On one Redis, fakeredis
and a cluster pool (the `store` fixture); tests/http/test_campaigns.py has the API's."""

from __future__ import annotations

import pytest

from coupon_pool.errors import (
    BatchExhausted,
    BatchNotFound,
    CouponDisabled,
    CouponExpired,
    CouponNotFound,
    PoolEmpty,
)
from coupon_pool.models import CouponType
from coupon_pool.pool.store import Store
from coupon_pool.tools.check import check
from support.factories import coupon, expired_coupon

STANDARD, FREE, MEGADEAL = CouponType.STANDARD, CouponType.FREE, CouponType.MEGADEAL


async def _clean(store: Store) -> None:
    assert (await check(store.redis, store.layout)).violations == []


async def _tidy(store: Store) -> None:
    """Run the batches' pending jobs (the app's jobs loop does it every JOBS_INTERVAL_S)."""
    while await store.batches.run_jobs():
        pass


async def test_an_upload_joins_the_batch_it_names_or_one_of_its_own(store: Store) -> None:
    named = await store.upload([coupon("A1"), coupon("A2", max_usages=3)], batch="spring")
    own = await store.upload([coupon("B1", type="FREE")])
    again = await store.upload([coupon("A3", type="FREE"), coupon("A1")], batch="spring")

    assert named.batch == again.batch == "spring"
    assert own.batch.startswith("b-")
    assert own.batch != "spring"
    spring = await store.batches.get("spring")
    assert spring.type == "MIXED"  # STANDARD, then FREE joined
    assert (spring.created, spring.available, spring.allocated, spring.used) == (3, 5, 0, 0)
    assert (spring.disabled, spring.max_redemptions, spring.source) == (False, None, "upload")
    assert (await store.batches.get(own.batch)).type == "FREE"
    assert (await store.get_coupon("A3")).batch == "spring"
    with pytest.raises(BatchNotFound):
        await store.batches.get("nope")
    await _clean(store)


async def test_batches_are_listed_by_id_a_page_at_a_time(store: Store) -> None:
    for name in ("c", "a", "b"):
        await store.upload([coupon(f"{name}1")], batch=name)
    first = await store.batches.page(2, None)
    assert [b.batch for b in first.batches] == ["a", "b"]
    assert first.next == "b"
    last = await store.batches.page(2, first.next)
    assert [b.batch for b in last.batches] == ["c"]
    assert last.next is None


async def test_a_batch_counts_allocations_redemptions_and_what_is_left(store: Store) -> None:
    await store.upload([coupon("K1", max_usages=2), coupon("K2")], batch="k")
    first = await store.allocate("u1", STANDARD)
    second = await store.allocate("u2", STANDARD)
    await store.redeem(first.code, "u1", STANDARD)
    await store.release(second.code, "u2", STANDARD)
    k = await store.batches.get("k")
    assert (k.created, k.allocated, k.used, k.available) == (2, 1, 1, 2)
    await store.rollback(first.code, "u1", STANDARD)
    assert (await store.batches.get("k")).used == 0
    await _clean(store)


async def test_a_disabled_batch_is_never_allocated_nor_redeemed_and_enabled_it_is_again(store: Store) -> None:
    await store.upload([coupon(f"D{i}", expires_in=3600) for i in range(5)], batch="leaked")
    await store.upload([coupon("OTHER", expires_in=7200)], batch="fine")
    given = await store.allocate("holder", STANDARD)
    assert given.code == "D0"  # the first to expire

    disabled = await store.batches.set_rules("leaked", disabled=True)

    assert disabled.disabled
    assert disabled.tidying
    assert (await store.allocate("u1", STANDARD)).code == "OTHER"  # past the disabled ones
    with pytest.raises(PoolEmpty):
        await store.allocate("u2", STANDARD)
    with pytest.raises(CouponDisabled):
        await store.redeem("D0", "holder", STANDARD)  # an allocation made before: refused too
    assert (await store.validate("D0", "holder", STANDARD)).code == "coupon_disabled"
    assert (await store.get_coupon("D1")).disabled
    assert (await store.stats()).types[STANDARD].disabled == 5
    await _clean(store)
    await _tidy(store)
    assert not (await store.batches.get("leaked")).tidying
    await _clean(store)

    enabled = await store.batches.set_rules("leaked", disabled=False)
    assert not enabled.disabled
    assert (await store.redeem("D0", "holder", STANDARD)).used == 1
    await _tidy(store)  # the coupons set aside go back to the pool
    assert (await store.allocate("u2", STANDARD)).code == "D1"
    assert (await store.stats()).types[STANDARD].disabled == 0
    await _clean(store)


async def test_enabled_before_the_tidy_the_coupons_set_aside_come_back_with_it(store: Store) -> None:
    await store.upload([coupon(f"E{i}") for i in range(3)], batch="e")
    await store.batches.set_rules("e", disabled=True)
    with pytest.raises(PoolEmpty):  # the allocation set every one aside
        await store.allocate("u1", STANDARD)
    await store.batches.set_rules("e", disabled=False)
    await _clean(store)  # set aside while its tidy is pending: not a violation
    await _tidy(store)
    assert (await store.allocate("u1", STANDARD)).code == "E0"
    await _clean(store)


async def test_many_disabled_coupons_ahead_cost_bounded_calls_not_a_lost_allocation(store: Store) -> None:
    # More disabled coupons ahead than one call sets aside (64): the call answers "retry" and
    # the store calls again, until the enabled coupon behind them.
    await store.upload([coupon(f"X{i:03d}", expires_in=3600) for i in range(150)], batch="x")
    await store.upload([coupon("LAST", expires_in=7200)], batch="y")
    await store.batches.set_rules("x", disabled=True)
    assert (await store.allocate("u1", STANDARD)).code == "LAST"
    await _clean(store)


async def test_one_coupon_is_disabled_and_enabled_on_its_own(store: Store) -> None:
    await store.upload(
        [coupon("SOLO", max_usages=2, expires_in=3600), coupon("NEXT", expires_in=7200)], batch="s"
    )
    await store.allocate("u1", STANDARD)

    state = await store.batches.switch("SOLO", None, disable=True)

    assert (state.disabled, state.disabled_on_its_own, state.batch, state.batch_disabled) == (
        True,
        True,
        "s",
        False,
    )
    with pytest.raises(CouponDisabled):
        await store.redeem("SOLO", "u1", STANDARD)
    assert (await store.allocate("u2", STANDARD)).code == "NEXT"
    assert (await store.batches.get("s")).disabled_coupons == 1
    assert (await store.stats()).types[STANDARD].disabled == 1
    await _clean(store)
    state = await store.batches.switch("SOLO", STANDARD, disable=False)
    assert not state.disabled
    assert (await store.allocate("u3", STANDARD)).code == "SOLO"  # back in the pool at once
    assert (await store.stats()).types[STANDARD].disabled == 0
    await _clean(store)
    with pytest.raises(CouponNotFound):
        await store.batches.switch("NOPE", None, disable=True)


async def test_an_expired_coupon_is_not_disabled(store: Store) -> None:
    await store.upload([expired_coupon("GONE")], batch="g")
    with pytest.raises(CouponExpired):
        await store.batches.switch("GONE", None, disable=True)


async def test_a_disabled_batch_of_megadeal_coupons_is_passed_over_by_the_gate(store: Store) -> None:
    from coupon_pool.pool.megadeal import MegadealGate, MegadealLimits

    await store.upload([coupon("M1", type="MEGADEAL", expires_in=3600)], batch="m")
    await store.upload([coupon("M2", type="MEGADEAL", expires_in=7200)], batch="n")
    await store.batches.set_rules("m", disabled=True)
    gate = MegadealGate(store.redis, store.keys, MegadealLimits(max_concurrent=5, rate_per_s=100))
    try:
        assert (await gate.allocate("u1")).code == "M2"
    finally:
        await gate.aclose()
    await _clean(store)


async def test_the_purge_takes_disabled_coupons_out_of_every_count(store: Store) -> None:
    await store.upload([expired_coupon("P1"), expired_coupon("P2")], batch="p")
    await store.batches.set_rules("p", disabled=True)
    assert (await store.stats()).types[STANDARD].disabled == 2
    await store.purge()
    assert (await store.stats()).types[STANDARD].disabled == 0
    p = await store.batches.get("p")
    assert (p.created, p.purged, p.available) == (2, 2, 0)
    await _clean(store)


async def test_a_cap_refuses_redemptions_beyond_it_and_a_rollback_gives_one_back(store: Store) -> None:
    await store.upload([coupon(f"C{i}") for i in range(4)], batch="capped", max_redemptions=2)
    users = [f"u{i}" for i in range(4)]
    codes = [(await store.allocate(u, STANDARD)).code for u in users]
    await store.redeem(codes[0], users[0], STANDARD)
    await store.redeem(codes[1], users[1], STANDARD)

    with pytest.raises(BatchExhausted):
        await store.redeem(codes[2], users[2], STANDARD)
    assert (await store.validate(codes[3], users[3], STANDARD)).code == "batch_exhausted"
    batch = await store.batches.get("capped")
    assert (batch.max_redemptions, batch.redeemed, batch.used) == (2, 2, 2)

    await store.rollback(codes[0], users[0], STANDARD)
    assert (await store.validate(codes[2], users[2], STANDARD)).valid
    await store.redeem(codes[2], users[2], STANDARD)
    with pytest.raises(BatchExhausted):
        await store.redeem(codes[0], users[0], STANDARD)
    assert (await store.batches.get("capped")).redeemed == 2
    await _clean(store)


async def test_a_cap_set_later_counts_the_redemptions_made_before_it(store: Store) -> None:
    await store.upload([coupon(f"L{i}") for i in range(3)], batch="later")
    codes = [(await store.allocate(f"u{i}", STANDARD)).code for i in range(3)]
    await store.redeem(codes[0], "u0", STANDARD)
    await store.redeem(codes[1], "u1", STANDARD)

    capped = await store.batches.set_rules("later", cap=2)

    assert (capped.max_redemptions, capped.redeemed) == (2, 2)
    with pytest.raises(BatchExhausted):
        await store.redeem(codes[2], "u2", STANDARD)
    raised = await store.batches.set_rules("later", cap=3)
    assert raised.redeemed == 2  # the count goes on
    await store.redeem(codes[2], "u2", STANDARD)
    removed = await store.batches.set_rules("later", cap=None)
    assert (removed.max_redemptions, removed.redeemed) == (None, None)
    await _clean(store)
