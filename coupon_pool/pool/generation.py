"""Generation: a batch of codes the service draws (POST /v1/batches), stored as a job.

The request makes the batch's record, with the generation's spec, and its job in one call
(generate.lua); the jobs round of any app process claims the job (batches.py) and stores
the codes through upload.lua, a chunk a call, so a code that exists already anywhere in the
pool is a duplicate (drawn again), never stored twice. Each slot that takes the batch's
coupons has a share of ``count`` (its quota) that upload.lua enforces in the same call that
stores: however many runners send chunks (one whose lease ran out while a call was in
flight, and the one that took over), no slot holds more than its share, so the batch never
holds more than ``count``. A runner taken over starts from what is stored: each slot's
``created`` count.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from dataclasses import dataclass
from secrets import randbelow

import orjson

from ..errors import BatchConflict, StoreFull
from ..models import PATTERN_SLOT, CouponIn, CouponType, GenerationRequest
from ..results import Batch
from .batches import Batches, Job
from .codec import to_ms
from .context import Context
from .functions import GENERATE
from .keys import Keys
from .uploading import Uploading, upload_line

JOB_KIND = "generate"
# The fields of a generated batch's record (the rest are every batch's: batches.py).
SPEC, STATUS, COUNT, ERROR = "gen_spec", "gen_status", "gen_count", "gen_error"
RUNNING, DONE, FAILED = "running", "done", "failed"
FUTILE_CALLS = 100  # calls in a row that stored nothing but duplicates: the pattern is taken
MEMORY_CHECK_S = 1.0  # how often a runner looks at Redis's memory (UPLOAD_MEMORY_SHARE): not every call
# Live traffic first: after a call, a runner that finds other tasks of its process ready to run
# (requests being served: they held the event loop this long before it resumed) pauses as long
# as the call took, so a generation takes at most about half of a busy process; idle, it runs on.
BUSY_LAG_S = 0.0005


class Stopped(Exception):
    """The generation cannot finish: the batch is marked failed with what was stored."""


@dataclass(frozen=True)
class Spec:
    """What a generation's runner needs, kept in the batch's record as JSON."""

    template: str  # the code, each drawn character a PATTERN_SLOT
    charset: str
    type: CouponType
    line: str  # the coupons' upload line (upload_line) after the code: the same for every code
    expires_ms: int

    @classmethod
    def of(cls, request: GenerationRequest) -> Spec:
        config = request.codes
        sample = CouponIn.model_construct(
            code="-", type=request.type, discount=request.discount, expires_at=request.expires_at,
            max_usages=request.max_usages, starts_at=request.starts_at, metadata=request.metadata,
        )  # fmt: skip
        line = upload_line(sample)
        return cls(config.template, config.charset, request.type, line[1:], to_ms(request.expires_at))

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Spec:
        fields = orjson.loads(text)
        return cls(**{**fields, "type": CouponType(fields["type"])})

    def draw(self, n: int) -> list[str]:
        """``n`` codes, each uniform over the pattern's codes and independent of the others:
        one number below space**n from ``secrets`` (the OS's CSPRNG), whose base-space digits
        are the codes (one call to the OS per chunk, not per code)."""
        charset, base = self.charset, len(self.charset)
        drawn = self.template.count(PATTERN_SLOT)
        space = base**drawn
        form = self.template.replace(PATTERN_SLOT, "%s")  # no other % in a template: it is validated
        x = randbelow(space**n)
        codes = []
        for _ in range(n):
            x, code = divmod(x, space)
            chars = []
            for _ in range(drawn):
                code, r = divmod(code, base)
                chars.append(charset[r])
            codes.append(form % tuple(chars))
        return codes


class Generating:
    def __init__(self, ctx: Context, uploading: Uploading, batches: Batches) -> None:
        self.ctx = ctx
        self.layout = ctx.layout
        self.main = ctx.layout.main
        self.uploading = uploading
        self.batches = batches
        batches.runners[JOB_KIND] = self._generate

    async def generate(self, request: GenerationRequest) -> Batch:
        """Make the batch and start its job; BatchConflict if the batch exists."""
        batch = request.batch or self.batches.new_id()
        fields: list[str | int | bytes] = [
            "type", request.type.value, "source", "generation",
            SPEC, Spec.of(request).to_json(), STATUS, RUNNING, COUNT, request.count,
        ]  # fmt: skip
        if request.max_redemptions is not None:
            fields += ["max_redemptions", request.max_redemptions, "redeemed", 0]
        main = self.main
        keys, args = GENERATE.bind(
            batches=main.batches, record=main.batch(batch), jobs=main.jobs, owners=main.job_owners,
            batch=batch, job=f"{JOB_KIND} {batch}", stamp="created_at", fields=fields,
        )  # fmt: skip
        if (await self.ctx.library.run(GENERATE, keys, args))[0] == "batch_conflict":
            raise BatchConflict(f"batch {batch!r} exists already: name another, or leave `batch` out")
        if request.max_redemptions is not None:  # the cap in every slot before this answers
            await self.batches.set_rules(batch, cap=request.max_redemptions)
        return await self.batches.get(batch)

    async def _generate(self, job: Job) -> None:
        """The job's runner: store the codes still missing, then mark the batch done (or
        failed, with what was stored, when it cannot finish)."""
        record_key = self.main.batch(job.batch)
        record = await self.ctx.redis.hgetall(record_key)
        if record.get(STATUS) != RUNNING:
            return
        if "max_redemptions" in record or record.get("disabled") == "1":
            # The request that made the batch may have stopped before every slot had its rules.
            await self.batches.set_rules(job.batch)
        try:
            await self._fill(job, Spec.from_json(record[SPEC]), int(record[COUNT]))
        except Stopped as stopped:
            await job.renew(force=True)  # a runner that lost the job leaves its end to the new one
            await self.ctx.redis.hset(record_key, mapping={STATUS: FAILED, ERROR: str(stopped)})
            return
        await self.ctx.redis.hset(record_key, STATUS, DONE)

    def quotas(self, ctype: CouponType, count: int) -> list[tuple[Keys, int]]:
        """Each slot that takes the batch's coupons, and its share of ``count``: the shards
        evenly in a sharded pool (the main slot for MEGADEAL coupons), else the main slot."""
        if ctype is CouponType.MEGADEAL or not self.layout.sharded:
            return [(self.main, count)]
        shards = self.layout.shards
        each, rest = divmod(count, len(shards))
        return [(k, each + (i < rest)) for i, k in enumerate(shards)]

    async def _created(self, k: Keys, batch: str) -> int:
        return int(await self.ctx.redis.hget(k.batch_stats(batch), "created") or 0)

    async def _fill(self, job: Job, spec: Spec, count: int) -> None:
        """Draw and store until every slot holds its share. Each round draws a chunk for each
        slot with room (codes whose slot is full are dropped: in a sharded pool a code's
        shard is its hash's); each call stores at most UPLOAD_CHUNK_SIZE coupons."""
        batch, chunk = job.batch, self.ctx.options.upload_chunk_size
        quotas = self.quotas(spec.type, count)
        room = {k.tag: quota - await self._created(k, batch) for k, quota in quotas}
        upload_id = f"generate-{uuid.uuid4().hex[:8]}"
        planned = -(-count // chunk)
        calls = futile = 0
        checked = 0.0
        while True:
            open_slots = [(k, quota) for k, quota in quotas if room[k.tag] > 0]
            if not open_slots:
                return
            if time.time() * 1000 >= spec.expires_ms:
                raise Stopped("the coupons' expires_at came before the generation finished")
            await job.renew()
            wanted = {k.tag: min(room[k.tag], chunk) for k, _ in open_slots}
            codes = spec.draw(sum(wanted.values()) * len(quotas) // len(open_slots))
            for k, quota in open_slots:
                lines = [code + spec.line for code in self._of_slot(codes, k, len(quotas))][: wanted[k.tag]]
                if not lines:
                    continue
                calls += 1
                check = time.monotonic() - checked >= MEMORY_CHECK_S
                checked = time.monotonic() if check else checked
                started = time.monotonic()
                try:
                    made, duplicates = await self._store(
                        k, lines, batch, part=f"{calls}/{planned}", upload_id=upload_id, quota=quota,
                        check_memory=check,
                    )  # fmt: skip
                    await _yield_to_traffic(time.monotonic() - started)
                except StoreFull:
                    raise Stopped(
                        "Redis reached UPLOAD_MEMORY_SHARE of its maxmemory: the codes stored so far stay"
                    ) from None
                if made + duplicates < len(lines):  # the slot's share was reached (another runner)
                    room[k.tag] = quota - await self._created(k, batch)
                else:
                    room[k.tag] -= made
                futile = 0 if made or len(lines) > made + duplicates else futile + 1
                if futile >= FUTILE_CALLS:
                    raise Stopped(
                        f"{FUTILE_CALLS} chunks in a row drew only codes that exist already: "
                        "the pool holds most of the pattern's codes"
                    )

    def _of_slot(self, codes: list[str], k: Keys, slots: int) -> list[str]:
        """Those of ``codes`` that slot ``k`` takes (all of them when one slot takes the batch)."""
        if slots == 1:
            return codes
        home = self.layout.home
        return [code for code in codes if home(code) is k]

    async def _store(
        self,
        k: Keys,
        lines: list[str],
        batch: str,
        *,
        part: str,
        upload_id: str,
        quota: int,
        check_memory: bool,
    ) -> tuple[int, int]:
        """Created and duplicates of one chunk. A MEGADEAL chunk in a sharded pool claims its
        codes in their shards first (codes stay unique pool-wide), then the main slot stores
        those claimed; a code claimed but not stored (the main slot's share reached, the
        process gone) stays claimed until the coupons' expiry, and is never drawn twice."""
        store = self.uploading.store_lines
        duplicates = 0
        if self.layout.sharded and k is self.main:
            claimed: list[str] = []
            by_shard: dict[str, tuple[Keys, list[str]]] = {}
            for line in lines:
                shard = self.layout.home(line[: line.index(" ")])
                by_shard.setdefault(shard.tag, (shard, []))[1].append(line)
            for shard, shard_lines in by_shard.values():
                _, taken, claims = await store(
                    shard, shard_lines, batch=batch, part=part, upload_id=upload_id, claiming=True,
                    check_memory=check_memory,
                )  # fmt: skip
                duplicates += len(taken)
                claimed += [shard_lines[i] for i in claims]
            lines = claimed
        made, taken, _ = await store(
            k, lines, batch=batch, part=part, upload_id=upload_id, quota=quota, check_memory=check_memory
        )
        return made, duplicates + len(taken)


async def _yield_to_traffic(spent_s: float) -> None:
    """Let the process's other tasks run; if they were waiting (it is serving requests), pause
    ``spent_s`` too: the call's own time (drawing is done before, outside it)."""
    before = time.monotonic()
    await asyncio.sleep(0)
    if time.monotonic() - before > BUSY_LAG_S:
        await asyncio.sleep(spent_s)
