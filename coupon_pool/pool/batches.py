"""Batches (campaigns): every upload and generation makes or joins one. A batch's record lives
in the main slot; its coupons, its per-slot counters, its codes and its rules (disabled, a cap
of redemptions) live in each slot that holds some of them, so every script reads a batch's
rules in its own slot (lib.lua, batch_rules). Disabling a batch of any size is one short call
per slot; tidying the available sets afterwards is a job (job.lua) any app process runs, a
bounded stretch of codes per call, and takes over when the process that ran it is gone."""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import BatchNotFound, CouponExpired, CouponNotFound
from ..models import CouponType
from ..results import Batch, BatchPage, CouponState, Generation
from .codec import from_ms
from .connection import process_name
from .context import TYPES, Context
from .functions import BATCH_OPEN, BATCH_RULES, BATCH_TIDY, COUPON_SWITCH, JOB
from .keys import Keys
from .placement import Placement

log = logging.getLogger("coupon_pool")

TIDY_STRETCH = 200  # codes a batch_tidy.lua call looks at
JOB_LEASE_MS = 10_000  # a job's runner renews its lease at least this often (a third of it, in fact)
TIDY = "tidy"  # the job kind that tidies a batch's coupons after a disable or enable
_COUNTS = ("created", "usages", "allocated", "used", "purged")

JobRunner = Callable[["Job"], Awaitable[None]]


class JobLost(Exception):
    """The job's lease is someone else's now (it was restarted, or taken over)."""


class Job:
    """One claimed job: its kind, batch, and the lease this runner holds (renew() keeps it)."""

    def __init__(self, batches: Batches, kind: str, batch: str, owner: str) -> None:
        self.batches, self.kind, self.batch, self.owner = batches, kind, batch, owner
        self.renewed = time.monotonic()

    async def renew(self, force: bool = False) -> None:
        """Keep the lease (at most every third of it, unless ``force``); JobLost if it is gone."""
        if not force and time.monotonic() - self.renewed < JOB_LEASE_MS / 3000:
            return
        if not await self.batches._job("renew", f"{self.kind} {self.batch}", self.owner):
            raise JobLost(f"{self.kind} {self.batch}")
        self.renewed = time.monotonic()


class Batches:
    def __init__(self, ctx: Context, placement: Placement) -> None:
        self.ctx = ctx
        self.run = ctx.library.run
        self.layout = ctx.layout
        self.main = ctx.layout.main
        self.placement = placement
        self.owner = f"{process_name()}/{uuid.uuid4().hex[:8]}"
        self.runners: dict[str, JobRunner] = {TIDY: self._tidy}

    @staticmethod
    def new_id(seed: str | None = None) -> str:
        """A batch id for an upload that names none: from ``seed`` (an Idempotency-Key's
        fingerprint, so a retried upload joins the same batch), else time-ordered and random."""
        if seed:
            return f"b-{seed[:24]}"
        return f"b-{time.time_ns() // 1_000_000:x}-{secrets.token_hex(4)}"

    async def open(self, batch: str, types: set[CouponType], source: str) -> None:
        """Make sure ``batch`` has its record before coupons join it."""
        ctype = next(iter(types)).value if len(types) == 1 else "MIXED"
        keys, args = BATCH_OPEN.bind(
            batches=self.main.batches, record=self.main.batch(batch), batch=batch, ctype=ctype, source=source
        )
        await self.run(BATCH_OPEN, keys, args, idempotent=True)

    async def get(self, batch: str) -> Batch:
        """The batch's record and its counts summed over the slots; BatchNotFound."""
        found = await self._read([batch])
        if not found:
            raise BatchNotFound(f"there is no batch {batch!r}")
        return found[0]

    async def page(self, limit: int, after: str | None) -> BatchPage:
        """Batches by id, ``limit`` at most, after ``after``."""
        start = f"({after}" if after else "-"
        ids: list[Any] = await self.ctx.redis.zrangebylex(self.main.batches, start, "+", 0, limit + 1)
        more = len(ids) > limit
        batches = await self._read(ids[:limit])
        return BatchPage.model_construct(batches=batches, next=ids[limit - 1] if more else None)

    async def _read(self, ids: list[str]) -> list[Batch]:
        redis = self.ctx.redis
        records: list[Any] = [await redis.hgetall(self.main.batch(b)) for b in ids]
        counts: list[dict[str, int]] = [dict.fromkeys((*_COUNTS, "off"), 0) for _ in ids]
        for k in self.layout.slots:
            async with redis.pipeline(transaction=False) as pipe:
                for b in ids:
                    pipe.hgetall(k.batch_stats(b))
                replies = await pipe.execute()
            for total, reply in zip(counts, replies, strict=True):
                for name, value in reply.items():
                    if name in total:
                        total[name] += int(value)
                    elif name.startswith("off:"):
                        total["off"] += int(value)
        jobs = await redis.zmscore(self.main.jobs, [f"{TIDY} {b}" for b in ids]) if ids else []
        found = []
        for b, r, total, job in zip(ids, records, counts, jobs, strict=True):
            if not r:
                continue
            cap = r.get("max_redemptions")
            generation = None
            if "gen_status" in r:
                generation = Generation.model_construct(
                    status=r["gen_status"], count=int(r["gen_count"]), stored=total["created"],
                    error=r.get("gen_error"),
                )  # fmt: skip
            found.append(
                Batch.model_construct(
                    batch=b,
                    type=r["type"],
                    source=r["source"],
                    created_at=from_ms(r["created_at"]),
                    created=total["created"],
                    allocated=total["allocated"],
                    used=total["used"],
                    available=max(0, total["usages"] - total["allocated"]),
                    purged=total["purged"],
                    disabled=r.get("disabled") == "1",
                    disabled_coupons=total["off"],
                    max_redemptions=int(cap) if cap is not None else None,
                    redeemed=int(r.get("redeemed", 0)) if cap is not None else None,
                    tidying=job is not None,
                    generation=generation,
                )
            )
        return found

    async def set_rules(
        self, batch: str, *, disabled: bool | None = None, cap: int | bool | None = False
    ) -> Batch:
        """Disable or enable the batch (``disabled``), or set its cap (``cap``: a number, None to
        remove it, False to leave it). Every slot gets the rules before this returns, the main
        slot first; then, if the batch was disabled or enabled, its tidy job starts."""
        record = await self.ctx.redis.hmget(
            self.main.batch(batch), "created_at", "disabled", "max_redemptions"
        )
        if record[0] is None:
            raise BatchNotFound(f"there is no batch {batch!r}")
        was_off = record[1] in (b"1", "1")
        old_cap = record[2]
        off = was_off if disabled is None else disabled
        new_cap = (int(old_cap) if old_cap is not None else None) if cap is False else cap
        rules = ("d" if off else "") + (f"c{new_cap}" if new_cap is not None else "")
        counted = 0
        for k in self.layout.slots:  # the main slot first: it counts its own redemptions itself
            keys, args = BATCH_RULES.bind(
                rules=k.rules, stats=k.stats, counts=k.batch_stats(batch), batch=batch, new_rules=rules,
                slot=k.slot, main="1" if k is self.main else "", audit_cap=self.ctx.audit_cap.value,
                types=TYPES,
            )  # fmt: skip
            counted += int((await self.run(BATCH_RULES, keys, args, idempotent=True))[0])
        if counted:  # redemptions in shards before the cap: counted against it
            await self.ctx.redis.hincrby(self.main.batch(batch), "redeemed", counted)
        if off != was_off:
            await self._job("start", f"{TIDY} {batch}", self.owner)
        return await self.get(batch)

    async def switch(self, code: str, coupon_type: CouponType | None, disable: bool) -> CouponState:
        """Disable or enable one coupon (coupon_switch.lua), in the slot that holds it."""
        reply: list[Any] = ["coupon_not_found"]
        for k in self.placement.slots_of(code, coupon_type):
            keys, args = COUPON_SWITCH.bind(
                coupon=k.coupon(code), stats=k.stats, audit_stream=k.audit, code=code,
                disable="1" if disable else "", slot=k.slot, audit_cap=self.ctx.audit_cap.value,
            )  # fmt: skip
            reply = await self.run(COUPON_SWITCH, keys, args, idempotent=True)
            if reply[0] != "coupon_not_found":
                break
        if reply[0] == "coupon_not_found":
            raise CouponNotFound(f"there is no coupon {code!r}")
        if reply[0] == "coupon_expired":
            raise CouponExpired(f"coupon {code!r} has expired: there is nothing to disable")
        own, batch_off = reply[2] == 1, reply[3] == 1
        return CouponState.model_construct(
            code=code, type=CouponType(reply[1]), disabled=own or batch_off, disabled_on_its_own=own,
            batch=reply[4] or None, batch_disabled=batch_off,
        )  # fmt: skip

    # Jobs: "<kind> <batch>" in the main slot's jobs, each run by one process at a time.

    async def _job(self, action: str, job: str, owner: str) -> bool:
        keys, args = JOB.bind(
            jobs=self.main.jobs, owners=self.main.job_owners, action=action, job=job, owner=owner,
            lease_ms=JOB_LEASE_MS,
        )  # fmt: skip
        return bool(await self.run(JOB, keys, args, idempotent=action != "start"))

    async def start_job(self, kind: str, batch: str) -> None:
        """Start (or restart) a job now: the next jobs round of any process takes it."""
        await self._job("start", f"{kind} {batch}", self.owner)

    async def run_jobs(self) -> int:
        """Claim the jobs whose lease ran out (new ones, or a dead process's) and run each to
        its end, renewing the lease; how many ran. A job lost to another runner stops."""
        due: list[Any] = await self.ctx.redis.zrangebyscore(self.main.jobs, "-inf", time.time() * 1000, 0, 16)
        ran = 0
        for job in due:
            kind, _, batch = job.partition(" ")
            runner = self.runners.get(kind)
            if runner is None or not await self._job("claim", job, self.owner):
                continue
            try:
                await runner(Job(self, kind, batch, self.owner))
            except JobLost:
                continue
            await self._job("finish", job, self.owner)
            ran += 1
        return ran

    async def _tidy(self, job: Job) -> None:
        """Every slot's stretch of the batch's codes through batch_tidy.lua, from the start (a
        job taken over starts again: tidying a coupon twice does what once does)."""
        for k in self.layout.slots:
            start = 0
            while start >= 0:
                await job.renew()
                start = await self.tidy_stretch(k, job.batch, start)

    async def tidy_stretch(self, k: Keys, batch: str, start: int) -> int:
        keys, args = BATCH_TIDY.bind(
            codes=k.batch_codes(batch), batch=batch, slot=k.slot, start=start, count=TIDY_STRETCH
        )
        return int((await self.run(BATCH_TIDY, keys, args, idempotent=True))[0])
