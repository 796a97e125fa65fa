"""The invariant checker: walk a pool in Redis and report every rule its data breaks.

``coupon-pool check`` runs it against ``REDIS_URL``; the tests run it after concurrent
workloads. It only reads, a page at a time (batched.py: no call holds Redis for more than
about a millisecond), so it can run beside a live service; run it on a quiet pool for an
exact answer, since a write between two reads can look like a violation.

Each slot is read in one SCAN of its keys, handed out by kind a batch at a time: coupon
hashes, their sorted sets, the types' timers (holds and starts) and the counters
(check_coupons.py); held sets, tracked sets, listings and lapsed listings (check_users.py);
and Idempotency-Key records ``{ns}:idem:...``, each of which expires, has a fingerprint,
and has a reply or an owner with a lease.

A sharded pool (POOL_SHARDS above 1) is checked slot by slot, the main slot and each
shard ``{ns:<i>}`` on its own (each slot's counters count its own coupons); and every
MEGADEAL coupon (main slot) is claimed in its code's shard, with its own line.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from ..models import CouponType
from ..pool.connection import connect
from ..pool.keys import CouponField, Keys, Layout, RecordField
from ..settings import Settings
from .batched import each, hashes, keys_under, sorted_sets
from .check_coupons import CouponRules
from .check_users import UserRules
from .common import ProgressLine, operator_settings, progress_every

BATCH = 500  # keys of one kind read at once


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


class Progress:
    """How far check is, on stderr: redrawn on a terminal, else a line every ``every_s`` seconds."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 5.0) -> None:
        self.line = ProgressLine(stream)
        self.every_s = 0.1 if self.line.terminal else every_s
        self.started = self.shown_at = time.monotonic()
        self.text = ""

    def show(self, slot: str, read: Counter[str], violations: int, *, last: bool = False) -> None:
        """``last``: a slot's final figures, drawn now on a terminal (off one, the report follows)."""
        moment = time.monotonic()
        if not (last and self.line.terminal) and moment - self.shown_at < self.every_s:
            return
        self.shown_at = moment
        kinds = ", ".join(f"{count:,} {kind}" for kind, count in read.items())
        self.text = (f"check {slot}: {read.total():,} keys read ({kinds}), {violations:,} violations, "
                     f"{moment - self.started:.1f}s")  # fmt: skip
        self.line.tick(self.text)

    def end(self) -> None:
        """A terminal's line is kept, so the report starts on a line of its own."""
        if self.text:
            self.line.end()


async def check(redis: Redis, where: Keys | Layout, progress: Progress | None = None) -> Report:
    """Every violation of the pool's rules in ``redis``, in one slot (``Keys``) or a whole pool."""
    if isinstance(where, Keys):
        return await _check_slot(redis, where, progress)
    report = Report()
    for keys in where.slots:
        found = await _check_slot(redis, keys, progress)
        report.coupons += found.coupons
        report.awaiting_purge += found.awaiting_purge
        report.violations += found.violations
    if where.sharded:
        await _check_claims(redis, where, report.violations.append)
    return report


class _Hashes:
    """Hashes under a prefix, kept whole by the name after it (a batch's counters are few)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.found: dict[str, dict[str, str]] = {}

    async def read(self, redis: Redis, keys: Sequence[str]) -> None:
        for key, fields in (await hashes(redis, keys)).items():
            self.found[key[len(self.prefix) :]] = fields


async def _check_slot(redis: Redis, keys: Keys, progress: Progress | None) -> Report:
    report = Report()
    bad = report.violations.append
    now_s, now_us = await redis.time()
    now_ms = int(now_s) * 1000 + int(now_us) // 1000
    coupons, users = CouponRules(keys, now_ms, bad), UserRules(keys, now_ms, bad)
    batch_counters = _Hashes(keys.batch_stats_prefix)
    await coupons.load(redis)
    readers: dict[str, tuple[str, Callable[[Redis, Sequence[str]], Awaitable[None]]]] = {
        keys.coupon_prefix: ("coupons", coupons.read),
        keys.held_prefix: ("held sets", users.held_sets),
        keys.tracked_prefix: ("tracked sets", users.tracked_sets),
        keys.user_prefix: ("listings", users.listings),
        keys.lapsed_prefix: ("lapsed listings", users.lapsed_listings),
        keys.idempotency_prefix: ("records", lambda redis, batch: _check_records(redis, batch, bad)),
        keys.batch_stats_prefix: ("batch counters", batch_counters.read),
    }
    pending: dict[str, list[str]] = {prefix: [] for prefix in readers}
    read = Counter({kind: 0 for kind, _ in readers.values()})  # keys read, by kind

    async def flush(prefix: str) -> None:
        kind, reader = readers[prefix]
        await reader(redis, pending[prefix])
        read[kind] += len(pending[prefix])
        pending[prefix] = []
        if progress:
            progress.show(keys.tag, read, len(report.violations))

    async for key in keys_under(redis, keys.tag + ":"):
        prefix = key[: key.find(":", len(keys.tag) + 1) + 1]  # "{ns}:c:", "{ns}:held:", ... or ""
        if prefix in pending:
            pending[prefix].append(key)
            if len(pending[prefix]) >= BATCH:
                await flush(prefix)
    for prefix in readers:
        if pending[prefix]:
            await flush(prefix)
    counters = cast(dict[str, str], await redis.hgetall(keys.stats))  # a few counters per type
    coupons.finish({name: int(value) for name, value in counters.items()})
    coupons.batches(batch_counters.found)
    report.coupons, report.awaiting_purge = len(coupons.seen), coupons.awaiting_purge
    if progress:
        progress.show(keys.tag, read, len(report.violations), last=True)
    return report


_RECORD_FIELDS = [RecordField.FINGERPRINT, RecordField.REPLY, RecordField.OWNER, RecordField.LEASE]


async def _check_records(redis: Redis, records: Sequence[str], bad: Callable[[str], None]) -> None:
    found = await each(
        redis, records, lambda pipe, record: (pipe.hmget(record, _RECORD_FIELDS), pipe.pttl(record)), 2
    )
    for i, record in enumerate(records):
        (fingerprint, reply, owner, lease), ttl = found[2 * i : 2 * i + 2]
        if ttl == -2:
            continue  # expired since SCAN found it
        if ttl < 0:
            bad(f"{record} never expires")
        if not fingerprint or not (reply is not None or (owner is not None and lease is not None)):
            has = [str(name) for name, value in zip(_RECORD_FIELDS, found[2 * i], strict=True)
                   if value is not None]  # fmt: skip
            bad(f"{record} has neither a reply nor an owner with a lease: {has}")


async def _check_claims(redis: Redis, layout: Layout, bad: Callable[[str], None]) -> None:
    main = layout.main
    scored = await sorted_sets(redis, [main.available(CouponType.MEGADEAL), main.exhausted])
    codes = [code for entries in scored.values() for code, _ in entries]
    types = await each(redis, codes, lambda pipe, code: pipe.hget(main.coupon(code), CouponField.TYPE))
    megadeal = [code for code, kind in zip(codes, types, strict=True) if kind == CouponType.MEGADEAL.value]

    def queue(pipe: Pipeline, code: str) -> None:
        home = layout.home(code)
        pipe.hget(home.megadeal_claims, code)
        pipe.exists(home.coupon(code))

    found = await each(redis, megadeal, queue, 2)
    for i, code in enumerate(megadeal):
        (line, shared), home = found[2 * i : 2 * i + 2], layout.home(code)
        if line is None or line.split(" ")[1:2] != ["MEGADEAL"]:
            bad(f"MEGADEAL coupon {code!r} is not claimed in {home.megadeal_claims}")
        elif shared:
            bad(f"MEGADEAL coupon {code!r} shares its code with {home.coupon(code)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="coupon-pool check",
        description="Check the pool in REDIS_URL (namespace KEY_NAMESPACE) against its rules.",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--progress-every", type=progress_every, default=5.0,
                        help="seconds between progress lines off a terminal (default 5)")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress; only the report")
    args = parser.parse_args(argv)
    settings = operator_settings("coupon-pool check")
    if settings is None:
        return 2
    progress = None if args.quiet else Progress(every_s=args.progress_every)
    report = asyncio.run(_run(settings, progress))
    if args.json:
        print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"{report.coupons} coupons checked, {report.awaiting_purge} expired awaiting the purge, "
              f"{len(report.violations)} violations")  # fmt: skip
        for violation in report.violations:
            print(f"  {violation}")
    return 0 if report.ok else 1


async def _run(settings: Settings, progress: Progress | None) -> Report:
    redis = connect(settings, 2, settings.redis_timeout_s)
    try:
        return await check(redis, Layout(settings.key_namespace, settings.pool_shards), progress)
    finally:
        if progress:
            progress.end()
        await redis.aclose()
