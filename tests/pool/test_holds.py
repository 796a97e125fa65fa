"""The checkout lifecycle in the store: holds (allocate with hold_s), validation, start dates
and metadata (issue 24). A hold or a start is brought forward by rewriting its time into the
past (``_bring_forward``), so no test waits for a clock; tests/http/test_checkout.py has the
ones that let real time pass."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from redis.exceptions import ResponseError

from coupon_pool.errors import (
    AlreadyRedeemed,
    CouponExpired,
    CouponNotYetValid,
    HoldExpired,
    NotAllocated,
    NotRedeemed,
    PoolEmpty,
    TypeMismatch,
)
from coupon_pool.models import AllocationRequest, CouponType
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from coupon_pool.pool.uploading import CHUNK_BYTES, line_weight, upload_line
from support.factories import coupon, expired_coupon

STANDARD, FREE = CouponType.STANDARD, CouponType.FREE


async def _redis_ms(store: Store) -> int:
    seconds, micros = await store.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _slot(store: Store, code: str, ctype: CouponType = STANDARD) -> Keys:
    return store.layout.of(code, ctype)


async def _bring_forward(
    store: Store, code: str, user: str | None = None, ctype: CouponType = STANDARD
) -> None:
    """End ``user``'s hold of ``code`` now (or, without a user, make the scheduled ``code``
    start now): its time, in the holder field (or the coupon's start) and in the type's timers,
    set to a second ago, as if that second had passed."""
    k, past = _slot(store, code, ctype), await _redis_ms(store) - 1000
    if user is None:
        await store.redis.hset(k.coupon(code), "st", past)
        await store.redis.zadd(k.due(ctype), {code: past})
        return
    state = await store.redis.hget(k.coupon(code), f"u:{user}")
    at, mark, _ = state.partition("h")
    assert mark == "h", state
    await store.redis.hset(k.coupon(code), f"u:{user}", f"{at}h{past}")
    await store.redis.zadd(k.due(ctype), {f"{code} {user}": past})


async def _audit_ops(store: Store) -> list[str]:
    return [e.op for e in (await store.audit(1000, None)).entries]


async def test_a_hold_answers_its_end_and_counts_as_held(store: Store) -> None:
    await store.upload([coupon("H", expires_in=7200)])
    before = await _redis_ms(store)
    held = await store.allocate("alice", STANDARD, 60)
    assert held.code == "H"
    assert held.metadata == {}
    assert held.hold_expires_at is not None
    end_ms = int(held.hold_expires_at.timestamp() * 1000)
    assert end_ms == int(held.allocated_at.timestamp() * 1000) + 60_000
    assert before + 60_000 <= end_ms
    stats = (await store.stats()).types[STANDARD]
    assert (stats.allocated, stats.held, stats.available, stats.hold_expired) == (1, 1, 0, 0)
    plain = await store.upload([coupon("P")])
    assert plain.created == 1
    given = await store.allocate("alice", STANDARD)
    assert (given.code, given.hold_expires_at) == ("P", None)


async def test_a_hold_ends_at_the_coupons_expiry_at_the_latest(store: Store) -> None:
    await store.upload([coupon("SOON", expires_in=30)])
    held = await store.allocate("alice", STANDARD, 3600)
    assert held.hold_expires_at == held.expires_at


async def test_a_redemption_within_the_hold_confirms_it_for_good(store: Store) -> None:
    await store.upload([coupon("H")])
    await store.allocate("alice", STANDARD, 60)
    redeemed = await store.redeem("H", "alice", None)
    assert redeemed.used == 1
    stats = (await store.stats()).types[STANDARD]
    assert (stats.held, stats.used, stats.hold_expired) == (0, 1, 0)
    assert await store.redis.zcard(_slot(store, "H").due(STANDARD)) == 0
    await store.settle()
    holder = (await store.get_coupon("H")).allocations[0]
    assert (holder.status, holder.redeemed_at is not None) == ("redeemed", True)
    listed = (await store.user_coupons("alice", 10, None)).coupons
    assert [(c.code, c.status) for c in listed] == [("H", "redeemed")]


async def test_a_release_within_the_hold_ends_it_and_the_coupon_is_available_again(store: Store) -> None:
    await store.upload([coupon("H")])
    await store.allocate("alice", STANDARD, 60)
    released = await store.release("H", "alice", None)
    assert released.allocated == 0
    stats = (await store.stats()).types[STANDARD]
    assert (stats.held, stats.released, stats.available, stats.hold_expired) == (0, 1, 1, 0)
    assert await store.redis.zcard(_slot(store, "H").due(STANDARD)) == 0
    assert (await store.allocate("bob", STANDARD)).code == "H"


async def test_a_hold_past_its_deadline_is_allocatable_at_once_and_counted(store: Store) -> None:
    await store.upload([coupon("H")])
    await store.allocate("alice", STANDARD, 60)
    with pytest.raises(PoolEmpty):
        await store.allocate("bob", STANDARD)
    await _bring_forward(store, "H", "alice")
    # No sweep, no stats, no purge: the allocation itself gives the hold back first.
    assert (await store.allocate("bob", STANDARD)).code == "H"
    stats = (await store.stats()).types[STANDARD]
    assert (stats.allocated, stats.held, stats.hold_expired, stats.released) == (1, 0, 1, 0)
    assert (await _audit_ops(store)).count("hold_expired") == 1
    with pytest.raises(HoldExpired):
        await store.redeem("H", "alice", None)
    with pytest.raises(HoldExpired):
        await store.release("H", "alice", None)
    listed = (await store.user_coupons("alice", 10, None)).coupons
    assert [(c.code, c.status) for c in listed] == [("H", "hold_expired")]
    assert listed[0].hold_expires_at is not None
    statuses = {h.user_id: h.status for h in (await store.get_coupon("H")).allocations}
    assert statuses == {"alice": "hold_expired", "bob": "allocated"}


async def test_a_redemption_after_the_deadline_answers_hold_expired_and_gives_the_coupon_back(
    store: Store,
) -> None:
    await store.upload([coupon("H")])
    await store.allocate("alice", STANDARD, 60)
    await _bring_forward(store, "H", "alice")
    with pytest.raises(HoldExpired):
        await store.redeem("H", "alice", None)
    assert await store.redis.zcard(_slot(store, "H").due(STANDARD)) == 0
    stats = (await store.stats()).types[STANDARD]
    assert (stats.available, stats.held, stats.hold_expired, stats.used) == (1, 0, 1, 0)
    ops = await _audit_ops(store)
    assert ops.count("hold_expired") == 1
    assert ops[-1] == "redeem"


async def test_the_user_whose_hold_lapsed_may_be_allocated_the_coupon_again(store: Store) -> None:
    await store.upload([coupon("H")])
    await store.allocate("alice", STANDARD, 60)
    await _bring_forward(store, "H", "alice")
    again = await store.allocate("alice", STANDARD)
    assert (again.code, again.hold_expires_at) == ("H", None)
    listed = (await store.user_coupons("alice", 10, None)).coupons
    assert [(c.code, c.status) for c in listed] == [("H", "allocated")]
    assert (await store.redeem("H", "alice", None)).used == 1


async def test_holds_of_a_coupon_of_many_usages_lapse_one_by_one(store: Store) -> None:
    await store.upload([coupon("MANY", max_usages=3)])
    for user in ("a", "b", "c"):
        await store.allocate(user, STANDARD, 60)
    with pytest.raises(PoolEmpty):
        await store.allocate("d", STANDARD)
    await _bring_forward(store, "MANY", "b")
    assert (await store.allocate("d", STANDARD)).code == "MANY"
    coupon_now = await store.get_coupon("MANY")
    assert coupon_now.allocated == 3
    assert {h.user_id: h.status for h in coupon_now.allocations} == {
        "a": "held", "b": "hold_expired", "c": "held", "d": "allocated",
    }  # fmt: skip


async def test_the_sweep_settles_due_holds_without_any_request(store: Store) -> None:
    await store.upload([coupon(f"S{i}") for i in range(5)])
    for i in range(5):
        await store.allocate(f"u{i}", STANDARD, 60)
    for i in range(3):
        await _bring_forward(store, f"S{i}", f"u{i}")
    assert await store.settle(batch=2) == 3  # two calls: a batch of 2, then the last
    assert await store.settle() == 0
    counters = await store.redis.hgetall(store.layout.main.stats) if not store.layout.sharded else None
    if counters is not None:
        assert (counters["STANDARD:held"], counters["STANDARD:hold_expired"]) == ("2", "3")
    stats = (await store.stats()).types[STANDARD]
    assert (stats.held, stats.hold_expired, stats.available) == (2, 3, 3)


async def test_a_scheduled_coupon_joins_the_pool_at_its_start(store: Store) -> None:
    await store.upload(
        [coupon("LATER", starts_in=3600, expires_in=7200), coupon("FREE1", type="FREE", starts_in=60)]
    )
    stats = await store.stats()
    assert (stats.types[STANDARD].scheduled, stats.types[STANDARD].available) == (1, 0)
    assert stats.types[FREE].scheduled == 1
    with pytest.raises(PoolEmpty):
        await store.allocate("alice", STANDARD)
    assert (await store.validate("LATER", "alice", None)).code == "coupon_not_yet_valid"
    with pytest.raises(CouponNotYetValid):
        await store.redeem("LATER", "alice", None)
    got = await store.get_coupon("LATER")
    assert got.scheduled
    assert got.starts_at is not None
    assert got.allocations == []
    await _bring_forward(store, "LATER")
    assert (await store.allocate("alice", STANDARD)).code == "LATER"
    stats = await store.stats()
    assert (stats.types[STANDARD].scheduled, stats.types[FREE].scheduled) == (0, 1)
    assert not (await store.get_coupon("LATER")).scheduled


async def test_a_start_in_the_past_is_no_schedule(store: Store) -> None:
    await store.upload([coupon("NOW", starts_in=-60)])
    assert (await store.stats()).types[STANDARD].scheduled == 0
    assert (await store.allocate("alice", STANDARD)).code == "NOW"
    assert (await store.get_coupon("NOW")).starts_at is not None


async def test_a_scheduled_coupon_that_expired_before_it_started_is_purged(store: Store) -> None:
    await store.upload([coupon("NEVER", starts_in=3600, expires_in=7200)])
    k = _slot(store, "NEVER")
    past = await _redis_ms(store) - 1000
    await store.redis.hset(k.coupon("NEVER"), mapping={"st": past - 1000, "exp": past})
    await store.redis.zadd(k.due(STANDARD), {"NEVER": past - 1000})
    result = await store.purge()
    assert result.purged[STANDARD] == 1
    assert await store.redis.exists(k.coupon("NEVER")) == 0
    stats = (await store.stats()).types[STANDARD]
    assert (stats.scheduled, stats.purged, stats.available) == (0, 1, 0)


async def test_the_purge_settles_the_holds_of_an_expired_coupon_before_it_deletes_it(store: Store) -> None:
    await store.upload([coupon("E", expires_in=600)])
    await store.allocate("alice", STANDARD, 600)
    k = _slot(store, "E")
    past = await _redis_ms(store) - 1000
    await store.redis.hset(k.coupon("E"), "exp", past)
    await store.redis.zadd(k.available(STANDARD), {"E": past})
    await store.redis.zadd(k.exhausted, {"E": past})
    await _bring_forward(store, "E", "alice")
    result = await store.purge()
    assert result.purged[STANDARD] == 1
    stats = (await store.stats()).types[STANDARD]
    assert (stats.held, stats.hold_expired, stats.allocated) == (0, 1, 0)
    assert await store.redis.zcard(k.due(STANDARD)) == 0


async def test_metadata_comes_back_with_the_coupon_its_allocation_validation_and_listing(
    store: Store,
) -> None:
    meta = {"campaign": "winter-26", "channel": "email", "sku.only": "A-1 B-2 \u00e9\u4e2d"}
    await store.upload([coupon("M", metadata=meta)])
    allocated = await store.allocate("alice", STANDARD)
    assert allocated.metadata == meta
    assert (await store.get_coupon("M")).metadata == meta
    assert (await store.validate("M", "alice", None)).coupon.metadata == meta  # type: ignore[union-attr]
    assert (await store.user_coupons("alice", 10, None)).coupons[0].metadata == meta


async def test_validation_answers_what_redemption_answers_and_writes_nothing(store: Store) -> None:
    """Each of redeem's refusals, validated first then redeemed: the same code, and the
    validation changed nothing in Redis."""
    for code, user, hold in (("OK", "alice", None), ("NOTYOURS", "bob", None), ("DONE", "alice", None),
                             ("HELD", "alice", 60)):  # fmt: skip
        await store.upload([coupon(code)])
        assert (await store.allocate(user, STANDARD, hold)).code == code
    await store.redeem("DONE", "alice", None)
    await _bring_forward(store, "HELD", "alice")
    await store.upload([coupon("FREE1", type="FREE"), coupon("LATER", starts_in=60), expired_coupon("OLD")])
    await store.allocate("alice", FREE)
    await store.redis.hset(_slot(store, "OLD").coupon("OLD"), mapping={"alloc": 1, "u:alice": 1})
    cases = [
        ("NOPE", None, "coupon_not_found"),
        ("FREE1", STANDARD, "type_mismatch"),
        ("LATER", None, "coupon_not_yet_valid"),
        ("NOTYOURS", None, "not_allocated"),
        ("DONE", None, "already_redeemed"),
        ("HELD", None, "hold_expired"),
        ("OLD", None, "coupon_expired"),
        ("OK", None, None),
    ]
    errors = {
        "coupon_not_found", "type_mismatch", "coupon_not_yet_valid", "not_allocated", "already_redeemed",
        "hold_expired", "coupon_expired",
    }  # fmt: skip
    assert {c for _, _, c in cases} - {None} == errors
    for code, ctype, expected in cases:
        dump = await _dump(store)
        validated = await store.validate(code, "alice", ctype)
        assert await _dump(store) == dump, code
        assert (validated.valid, validated.code) == (expected is None, expected), code
        try:
            await store.redeem(code, "alice", ctype)
            answered = None
        except (
            AlreadyRedeemed, CouponExpired, CouponNotYetValid, HoldExpired, NotAllocated, TypeMismatch,
        ) as exc:  # fmt: skip
            answered = exc.code
        except Exception as exc:  # coupon_not_found
            answered = getattr(exc, "code", repr(exc))
        assert answered == expected, code


async def _dump(store: Store) -> dict[str, bytes | None]:
    """Every key of the pool's slots, and its serialized value (the audit stream's length
    instead: its entries carry their own ids)."""
    found: dict[str, bytes | None] = {}
    redis = store.redis
    for k in store.layout.slots:
        async for key in redis.scan_iter(match=f"{k.tag}*", count=1000):
            if key == k.audit:
                found[key] = str(await redis.xlen(key)).encode()
            else:
                found[key] = await redis.dump(key)
    return found


async def test_a_rollback_of_a_lapsed_hold_answers_hold_expired(store: Store) -> None:
    await store.upload([coupon("H")])
    await store.allocate("alice", STANDARD, 60)
    with pytest.raises(NotRedeemed):
        await store.rollback("H", "alice", None)
    await _bring_forward(store, "H", "alice")
    with pytest.raises(HoldExpired):
        await store.rollback("H", "alice", None)
    assert (await store.stats()).types[STANDARD].hold_expired == 1


def test_a_start_must_come_before_the_expiry() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must be before expires_at"):
        coupon("X", starts_in=7200, expires_in=3600)
    with pytest.raises(ValidationError, match="after 1970"):
        coupon("X", starts_in=-(datetime.now(UTC) - datetime(1960, 1, 1, tzinfo=UTC)).total_seconds())
    assert coupon("X", starts_in=-timedelta(days=1).total_seconds()).starts_at is not None


async def test_a_hold_ended_behind_timers_that_free_nothing_for_the_user_is_still_allocatable(
    store: Store,
) -> None:
    """Seventeen holds end before the one that frees a coupon alice may get: sixteen of a
    coupon she holds, then bob's of N, last. The first batch an allocation settles frees
    nothing for her; the next does."""
    await store.upload([coupon("M", max_usages=17)])
    await store.allocate("alice", STANDARD)
    for i in range(16):
        await store.allocate(f"u{i}", STANDARD, 60)
    await store.upload([coupon("N")])
    assert (await store.allocate("bob", STANDARD, 60)).code == "N"
    k, now = _slot(store, "M"), await _redis_ms(store)
    for i in range(16):
        at = (await store.redis.hget(k.coupon("M"), f"u:u{i}")).partition("h")[0]
        await store.redis.hset(k.coupon("M"), f"u:u{i}", f"{at}h{now - 2000 + i}")
        await store.redis.zadd(k.due(STANDARD), {f"M u{i}": now - 2000 + i})
    await _bring_forward(store, "N", "bob")  # a second ago: after the sixteen
    assert (await store.allocate("alice", STANDARD)).code == "N"


async def test_a_hold_an_older_version_redeemed_reads_as_redeemed(store: Store) -> None:
    """A version of the service without holds, sharing the Redis during a deploy, redeems a
    hold by appending ":<redeemed_at>" to its holder field."""
    await store.upload([coupon("OLD")])
    await store.allocate("alice", STANDARD, 60)
    k = _slot(store, "OLD")
    state = await store.redis.hget(k.coupon("OLD"), "u:alice")
    await store.redis.hset(k.coupon("OLD"), "u:alice", f"{state}:{await _redis_ms(store)}")
    with pytest.raises(AlreadyRedeemed):
        await store.redeem("OLD", "alice", None)
    with pytest.raises(AlreadyRedeemed):
        await store.release("OLD", "alice", None)
    assert [h.status for h in (await store.get_coupon("OLD")).allocations] == ["redeemed"]
    await _bring_forward_timer(store, "OLD", "alice")
    await store.settle()  # its timer goes, and the count with it; nothing given back
    stats = (await store.stats()).types[STANDARD]
    assert (stats.held, stats.hold_expired, stats.allocated, stats.available) == (0, 0, 1, 0)


async def _bring_forward_timer(store: Store, code: str, user: str) -> None:
    k = _slot(store, code)
    await store.redis.zadd(k.due(STANDARD), {f"{code} {user}": await _redis_ms(store) - 1000})


def test_an_allocation_without_a_hold_keeps_the_fingerprint_it_had_before_holds() -> None:
    # As an earlier version fingerprinted it: a keyed retry across the upgrade replays.
    assert AllocationRequest(user_id="u").fingerprint_json() == b'{"user_id":"u","type":"STANDARD"}'
    assert (
        AllocationRequest(user_id="u", hold_s=5).fingerprint_json()
        != AllocationRequest(user_id="u").fingerprint_json()
    )


async def test_coupons_with_long_metadata_go_in_smaller_chunks(store: Store) -> None:
    """A chunk ends at 100 coupons or, sooner, once its lines could pass CHUNK_BYTES: 30
    coupons of the longest metadata (every character escaped as JSON writes a control
    character: 6 bytes) take ten calls of three, not one of thirty."""
    meta = {f"key-{k:02d}": "\x01" * 500 for k in range(50)}
    coupons = [coupon(f"LONG{i:02d}", metadata=meta) for i in range(30)]
    assert len(upload_line(coupons[0]).encode()) <= line_weight(coupons[0])
    assert 3 * line_weight(coupons[0]) <= CHUNK_BYTES < 4 * line_weight(coupons[0])
    assert (await store.upload(coupons)).created == 30
    parts = [e for e in (await store.audit(1000, None)).entries if e.op == "upload"]
    assert len(parts) == 10
    assert (await store.get_coupon("LONG29")).metadata == meta
    await store.upload([coupon(f"PLAIN{i:03d}") for i in range(250)])  # plain: 100 a call
    assert len([e for e in (await store.audit(1000, None)).entries if e.op == "upload"]) == 13


async def test_a_holder_record_of_no_known_form_is_an_error_not_a_guess(store: Store) -> None:
    await store.upload([coupon("BAD")])
    await store.allocate("alice", STANDARD, 60)
    await store.redis.hset(_slot(store, "BAD").coupon("BAD"), "u:alice", "12y34")
    with pytest.raises(ResponseError, match="malformed holder record"):
        await store.redeem("BAD", "alice", None)
    with pytest.raises(ValueError, match="malformed holder record"):
        await store.get_coupon("BAD")
