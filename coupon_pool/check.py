"""The invariant checker: walk a pool in Redis and report every rule its data breaks.

``coupon-pool check`` runs it against ``REDIS_URL``; the tests run it after concurrent
workloads. It reads only (SCAN, HGETALL, ZRANGE), in batches, so it can run beside a
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
coupons stored, ``used`` equals the redemptions recorded, and ``allocated`` is at least the
allocations recorded (the purge deletes never-redeemed coupons with their allocations, so
the counter can only be larger). Expired coupons still in an available set are not a
violation: allocation skips them and the purge removes them; they are counted apart.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from .keys import Keys
from .models import CouponType
from .settings import Settings, settings_for
from .store import Store

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


async def check(redis: Redis, keys: Keys) -> Report:
    """Every violation of the pool's rules in ``redis`` under ``keys``."""
    report = Report()
    now_s, now_us = await redis.time()
    now_ms = int(now_s) * 1000 + int(now_us) // 1000
    sets = {t: keys.available(CouponType(t)) for t in _TYPES}
    members: dict[str, dict[str, float]] = {}  # sorted set -> {code: score}
    for key in (*sets.values(), keys.exhausted):
        scored = cast(list[tuple[str, float]], await redis.zrange(key, 0, -1, withscores=True))
        members[key] = {_text(m): s for m, s in scored}
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
                              keys.exhausted, members, report, stored, allocations, redemptions)  # fmt: skip
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
    return report


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
) -> None:
    def bad(rule: str) -> None:
        report.violations.append(f"coupon {code!r}: {rule}")

    ctype = fields.get("type")
    try:
        expires, max_usages = int(fields["exp"]), int(fields["max"])
        allocated, used = int(fields["alloc"]), int(fields["used"])
    except (KeyError, ValueError):
        bad(f"fields missing or not integers: {sorted(fields)}")
        return
    if ctype not in _TYPES:
        bad(f"unknown type {ctype!r}")
        return
    stored[ctype] += 1
    holders = [(k[2:], v) for k, v in fields.items() if k.startswith("u:")]
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
        bad(f"alloc is {allocated} but {len(holders)} users hold it")
    if allocated > max_usages:
        bad(f"{allocated} usages allocated, more than its {max_usages}")
    if used != redeemed:
        bad(f"used is {used} but {redeemed} holders redeemed it")

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
        if allocated < max_usages:
            bad(f"in {exhausted} with a free usage ({allocated} of {max_usages})")
    else:
        if found[0] != sets[ctype]:
            bad(f"in {found[0]}, not the available set of its type {ctype}")
        if allocated >= max_usages:
            bad(f"available with no free usage ({allocated} of {max_usages})")
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
    settings = settings_for("coupon-pool check")
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
    store = Store.from_settings(settings, max_connections=2)
    try:
        return await check(store.redis, store.keys)
    finally:
        await store.aclose()
