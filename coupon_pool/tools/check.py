"""The invariant checker: walk a pool in Redis and report every rule its data breaks.

``coupon-pool check`` runs it against ``REDIS_URL``; the tests run it after concurrent
workloads. It reads only (SCAN, HGETALL, ZRANGE, ...), in batches, so it can run beside a
live service; run it on a quiet pool for an exact answer, since a write between two
reads can look like a violation.

The rules, per coupon hash ``{ns}:c:<code>``:
- its fields are whole: a known type, exp and max and alloc and used are integers;
- ``alloc`` equals its holders (``u:<user>`` fields) and is at most ``max``: no usage is
  handed out twice, and a user holds a code at most once (one field per user);
- ``used`` equals its redeemed holders, and each redemption is not earlier than the
  allocation it redeems;
- it is in exactly one sorted set, with its expiry as the score: its type's available set
  while it has a free usage, ``{ns}:exhausted`` once it has none, or none at all once
  the purge retired it (expired, redeemed at least once).
Per sorted set: every member has a coupon hash. Per type: ``created - purged`` equals the
coupons stored, ``used`` (net of rollbacks) equals the redemptions recorded, and
``allocated`` (net of releases) is at least the allocations recorded (the purge deletes
never-redeemed coupons with their allocations, so the counter can only be larger).
Expired coupons still in an available set are not a violation: allocation skips them and
the purge removes them; they are counted apart. An expired coupon may sit in
``{ns}:exhausted`` with a free usage (a release after expiry leaves it out of the pool).

Per user (lib.lua's structures for allocation, releases and the user's listing):
- every unexpired entry of a held set ``{ns}:held:<TYPE>:<user>`` is a coupon of that type
  in its available set, held by that user, scored by its expiry, and the coupon's tracked
  set ``{ns}:trk:<code>`` names the user (a held set may lack entries, never have extra);
- every user a tracked set of an unexpired coupon names lists the coupon in their held set;
- every entry of a listing ``{ns}:user:<TYPE>:<user>`` whose coupon still exists is a
  coupon of that type held by the user, scored by its allocated_at;
- a coupon in its available set with no free usage is draining (``{ns}:draining:<TYPE>``,
  see lib.lua), and every draining coupon is in its type's available set.
Per Idempotency-Key record ``{ns}:idem:...``: it expires, has a fingerprint, and has a
reply or an owner with a lease.

A sharded pool (POOL_SHARDS above 1) is checked slot by slot, the main slot and each
shard ``{ns:<i>}`` on its own (each slot's counters count its own coupons); and every
MEGADEAL coupon (main slot) is claimed in its code's shard, with its own line.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from ..models import CouponType
from ..pool.connection import connect
from ..pool.keys import CouponField, Keys, Layout, RecordField
from ..settings import Settings
from .common import operator_settings

_BATCH = 500
_TYPES = tuple(t.value for t in CouponType)


@dataclass
class Report:
    coupons: int = 0
    awaiting_purge: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "coupons": self.coupons, "awaiting_purge": self.awaiting_purge,
                "violations": self.violations}  # fmt: skip


async def check(redis: Redis, where: Keys | Layout) -> Report:
    """Every violation of the pool's rules in ``redis``, in one slot (``Keys``) or a whole pool."""
    if isinstance(where, Keys):
        return await _check_slot(redis, where)
    report = Report()
    for keys in where.slots:
        found = await _check_slot(redis, keys)
        report.coupons += found.coupons
        report.awaiting_purge += found.awaiting_purge
        report.violations += found.violations
    if where.sharded:
        await _check_claims(redis, where, report)
    return report


async def _check_claims(redis: Redis, layout: Layout, report: Report) -> None:
    main = layout.main
    mega = main.available(CouponType.MEGADEAL)
    codes = [_text(c) for c in cast(list[str], await redis.zrange(mega, 0, -1))]
    codes += [_text(c) for c in cast(list[str], await redis.zrange(main.exhausted, 0, -1))]
    for code in codes:
        found_type = await redis.hget(main.coupon(code), CouponField.TYPE)
        if found_type is None or _text(found_type) != CouponType.MEGADEAL.value:
            continue
        home = layout.home(code)
        line = await redis.hget(home.megadeal_claims, code)
        if line is None or _text(line).split(" ")[1:2] != ["MEGADEAL"]:
            report.violations.append(f"MEGADEAL coupon {code!r} is not claimed in {home.megadeal_claims}")
        elif await redis.exists(home.coupon(code)):
            report.violations.append(f"MEGADEAL coupon {code!r} shares its code with {home.coupon(code)}")


async def _check_slot(redis: Redis, keys: Keys) -> Report:
    report = Report()
    now_s, now_us = await redis.time()
    now_ms = int(now_s) * 1000 + int(now_us) // 1000
    sets = {t: keys.available(CouponType(t)) for t in _TYPES}
    members: dict[str, dict[str, float]] = {}  # sorted set -> {code: score}
    for key in (*sets.values(), keys.exhausted):
        scored = cast(list[tuple[str, float]], await redis.zrange(key, 0, -1, withscores=True))
        members[key] = {_text(m): s for m, s in scored}
    draining: set[str] = set()
    for t in _TYPES:
        drains = keys.draining(CouponType(t))
        for member in cast(list[str], await redis.zrange(drains, 0, -1)):
            draining.add(_text(member))
            if _text(member) not in members[sets[t]]:
                report.violations.append(f"{drains} holds {_text(member)!r}, not in {sets[t]}")
    stored: Counter[str] = Counter()
    allocations: Counter[str] = Counter()
    redemptions: Counter[str] = Counter()
    seen: set[str] = set()

    prefix = keys.coupon_prefix
    batch: list[str] = []

    async def flush() -> None:
        pipe = redis.pipeline(transaction=False)
        for key in batch:
            pipe.hgetall(key)
        for key, fields in zip(batch, await pipe.execute(), strict=True):
            code = key[len(prefix) :]
            if fields:  # deleted between SCAN and HGETALL: nothing to check
                seen.add(code)
                _check_coupon(code, {_text(k): _text(v) for k, v in fields.items()}, now_ms, sets,
                              keys.exhausted, members, report, stored, allocations, redemptions,
                              code in draining)  # fmt: skip
        batch.clear()

    async for key in redis.scan_iter(match=_escape(prefix) + "*", count=1000):
        batch.append(_text(key))
        if len(batch) >= _BATCH:
            await flush()
    if batch:
        await flush()

    for key, codes in members.items():
        for code in codes.keys() - seen:
            report.violations.append(f"{key} holds {code!r}, which has no coupon hash")
    counters = {_text(k): int(v) for k, v in (await redis.hgetall(keys.stats)).items()}
    for t in _TYPES:
        created, purged = counters.get(f"{t}:created", 0), counters.get(f"{t}:purged", 0)
        if created - purged != stored[t]:
            report.violations.append(
                f"{t}: created {created} - purged {purged} != {stored[t]} coupons stored"
            )
        if counters.get(f"{t}:used", 0) != redemptions[t]:
            report.violations.append(
                f"{t}: used counter {counters.get(f'{t}:used', 0)} != {redemptions[t]} redemptions recorded"
            )
        counted = counters.get(f"{t}:allocated", 0)
        if counted < allocations[t]:
            report.violations.append(
                f"{t}: allocated counter {counted} < {allocations[t]} allocations recorded"
            )
    report.coupons = len(seen)
    await _check_users(redis, keys, now_ms, report)
    await _check_records(redis, keys, report)
    return report


async def _keys_under(redis: Redis, prefix: str) -> list[str]:
    return [_text(k) async for k in redis.scan_iter(match=_escape(prefix) + "*", count=1000)]


async def _check_users(redis: Redis, keys: Keys, now_ms: int, report: Report) -> None:
    bad = report.violations.append
    tracked_prefix, held_prefix = keys.tracked_prefix, keys.held_prefix
    for held in await _keys_under(redis, held_prefix):
        ctype, _, user = held[len(held_prefix) :].partition(":")
        available = keys.available(CouponType(ctype)) if ctype in _TYPES else ""
        entries = cast(list[tuple[str, float]], await redis.zrange(held, now_ms + 1, "+inf", byscore=True,
                                                                   withscores=True))  # fmt: skip
        for start in range(0, len(entries), _BATCH):
            pipe = redis.pipeline(transaction=False)
            batch = entries[start : start + _BATCH]
            for code, _ in batch:
                pipe.hmget(keys.coupon(_text(code)), [CouponField.EXPIRES, CouponField.HOLDER + user])
                pipe.zscore(available, _text(code))
                pipe.sismember(tracked_prefix + _text(code), user)
            found = await pipe.execute()
            for i, (code, score) in enumerate(batch):
                (expires, holder), in_available, is_tracked = found[3 * i : 3 * i + 3]
                where = f"{held} lists {_text(code)!r}"
                if holder is None:
                    bad(f"{where}, which the user does not hold")
                elif in_available is None:
                    bad(f"{where}, which is not in {available}")
                elif expires is None or int(expires) != score:
                    bad(f"{where} scored {score:.0f}, not its expiry {expires}")
                if not is_tracked:
                    bad(f"{where}, but {tracked_prefix}{_text(code)} does not name the user")
    for tracked in await _keys_under(redis, tracked_prefix):
        tracked_code = tracked[len(tracked_prefix) :]
        kind, expires = (
            _text(v or "")
            for v in await redis.hmget(keys.coupon(tracked_code), [CouponField.TYPE, CouponField.EXPIRES])
        )
        if not expires or int(expires) <= now_ms:
            continue  # expired: its holders drop it from their held sets; the purge drops this set
        for member in await redis.smembers(tracked):
            holder = _text(member)
            held_set = keys.held(CouponType(kind), holder) if kind in _TYPES else ""
            if not held_set or await redis.zscore(held_set, tracked_code) is None:
                bad(f"{tracked} names {holder!r}, whose held set does not list {tracked_code!r}")
    for listing in await _keys_under(redis, keys.user_prefix):
        ctype, _, user = listing[len(keys.user_prefix) :].partition(":")
        for code, score in cast(list[tuple[str, float]], await redis.zrange(listing, 0, -1, withscores=True)):
            found_type, state = await redis.hmget(
                keys.coupon(_text(code)), [CouponField.TYPE, CouponField.HOLDER + user]
            )
            if found_type is None:
                continue  # purged: dropped from the listing when a page meets it
            if state is None:
                bad(f"{listing} lists {_text(code)!r}, which the user does not hold")
            elif _text(found_type) != ctype:
                bad(f"{listing} lists {_text(code)!r}, of type {_text(found_type)}")
            elif int(_text(state).partition(":")[0]) != score:
                bad(f"{listing} scores {_text(code)!r} {score:.0f}, not its allocated_at {_text(state)}")


async def _check_records(redis: Redis, keys: Keys, report: Report) -> None:
    for record in await _keys_under(redis, keys.idempotency_prefix):
        fields = {_text(k): _text(v) for k, v in (await redis.hgetall(record)).items()}
        if await redis.pttl(record) < 0:
            report.violations.append(f"{record} never expires")
        replied = RecordField.REPLY in fields
        owned = RecordField.OWNER in fields and RecordField.LEASE in fields
        if not fields.get(RecordField.FINGERPRINT) or not (replied or owned):
            report.violations.append(
                f"{record} has neither a reply nor an owner with a lease: {sorted(fields)}"
            )


def _check_coupon(
    code: str,
    fields: dict[str, str],
    now_ms: int,
    sets: dict[str, str],
    exhausted: str,
    members: dict[str, dict[str, float]],
    report: Report,
    stored: Counter[str],
    allocations: Counter[str],
    redemptions: Counter[str],
    draining: bool,
) -> None:
    def bad(rule: str) -> None:
        report.violations.append(f"coupon {code!r}: {rule}")

    ctype = fields.get(CouponField.TYPE)
    try:
        expires, max_usages = int(fields[CouponField.EXPIRES]), int(fields[CouponField.MAX_USAGES])
        allocated, used = int(fields[CouponField.ALLOCATED]), int(fields[CouponField.USED])
    except (KeyError, ValueError):
        bad(f"fields missing or not integers: {sorted(fields)}")
        return
    if ctype not in _TYPES:
        bad(f"unknown type {ctype!r}")
        return
    stored[ctype] += 1
    holder = CouponField.HOLDER.value
    holders = [(k[len(holder) :], v) for k, v in fields.items() if k.startswith(holder)]
    redeemed = 0
    for user, state in holders:
        allocated_at, _, redeemed_at = state.partition(":")
        if not allocated_at.isdigit() or (redeemed_at and not redeemed_at.isdigit()):
            bad(f"holder {user!r} has a malformed record {state!r}")
        elif redeemed_at:
            redeemed += 1
            if int(redeemed_at) < int(allocated_at):
                bad(f"holder {user!r} redeemed before it was allocated")
    allocations[ctype] += len(holders)
    redemptions[ctype] += redeemed
    if allocated != len(holders):
        bad(f"{CouponField.ALLOCATED} is {allocated} but {len(holders)} users hold it")
    if allocated > max_usages:
        bad(f"{allocated} usages allocated, more than its {max_usages}")
    if used != redeemed:
        bad(f"{CouponField.USED} is {used} but {redeemed} holders redeemed it")

    found = [key for key, codes in members.items() if code in codes]
    for key in found:
        if members[key][code] != expires:
            bad(f"scored {members[key][code]:.0f} in {key}, not its expiry {expires}")
    if len(found) > 1:
        bad(f"in more than one sorted set: {found}")
    elif not found:
        if expires > now_ms or used == 0:
            bad("in no sorted set, yet not retired (unexpired, or never redeemed)")
    elif found[0] == exhausted:
        if allocated < max_usages and expires > now_ms:
            bad(f"in {exhausted} with a free usage ({allocated} of {max_usages})")
    else:
        if found[0] != sets[ctype]:
            bad(f"in {found[0]}, not the available set of its type {ctype}")
        if allocated >= max_usages and not draining:
            bad(f"available with no free usage ({allocated} of {max_usages}), and not draining")
        if expires <= now_ms:
            report.awaiting_purge += 1


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _escape(pattern: str) -> str:
    """A literal key prefix as a SCAN pattern: the hash tag's braces are fine, these are not."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in pattern)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="coupon-pool check",
        description="Check the pool in REDIS_URL (namespace KEY_NAMESPACE) against its rules.",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    settings = operator_settings("coupon-pool check")
    if settings is None:
        return 2
    report = asyncio.run(_run(settings))
    if args.json:
        print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"{report.coupons} coupons checked, {report.awaiting_purge} expired awaiting the purge, "
              f"{len(report.violations)} violations")  # fmt: skip
        for violation in report.violations:
            print(f"  {violation}")
    return 0 if report.ok else 1


async def _run(settings: Settings) -> Report:
    redis = connect(settings, 2, settings.redis_timeout_s)
    try:
        return await check(redis, Layout(settings.key_namespace, settings.pool_shards))
    finally:
        await redis.aclose()
