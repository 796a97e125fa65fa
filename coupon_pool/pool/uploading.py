"""Uploads: new coupons stored in chunks, one function call each, so Redis serves others in
between; with an Idempotency-Key, resumable chunk by chunk."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import Any, cast

import orjson

from ..errors import StoreFull
from ..models import CouponIn, CouponType
from ..results import UploadResult
from . import keyed
from .batches import Batches
from .codec import to_ms, upload_result
from .context import Context
from .functions import UPLOAD, UPLOAD_RECORD
from .keys import Keys
from .upkeep import Upkeep

UPLOAD_LEASE_MS = 30_000  # an upload attempt owns its key this long after its last chunk


class Uploading:
    def __init__(self, ctx: Context, upkeep: Upkeep, batches: Batches) -> None:
        self.ctx = ctx
        self.layout = ctx.layout
        self.run = ctx.library.run
        self.upkeep = upkeep
        self.batches = batches

    async def upload(
        self,
        coupons: Sequence[CouponIn],
        batch: str | None = None,
        max_redemptions: int | None = None,
        source: str = "upload",
    ) -> UploadResult:
        """Store new coupons; each goes to its slot: its shard, or for a MEGADEAL coupon the
        main slot. In a sharded pool a MEGADEAL coupon is first claimed in its code's shard (so
        a code is unique pool-wide), then stored in the main slot.

        In a keyed operation, each chunk's outcome is recorded by the call that stores it (in
        its slot's copy of the record): a retry after a partial failure stores only the chunks
        not recorded yet, and answers what one complete upload would have.

        The coupons join ``batch`` (made now if new; without one, a batch of the upload's own,
        named after its Idempotency-Key when it has one, so a retry joins the same batch);
        ``max_redemptions`` sets the batch's cap first.
        """
        run = keyed.current()
        batch = batch or self.batches.new_id(run.idem.fingerprint if run else None)
        owner = uuid.uuid4().hex[:16]
        chunk_size = self.ctx.options.upload_chunk_size
        groups = self._groups(coupons)
        records: list[str] = []
        if run:
            idem, main = run.idem, self.layout.main
            records = [idem.record] + [idem.record_in(k.tag) for k, _ in groups if k is not main]
            for record in records:  # the main slot's first: it holds the answer
                keys, args = UPLOAD_RECORD.bind(
                    record=record, action="claim", fp=idem.fingerprint, owner=owner, ttl_ms=idem.ttl_ms,
                    lease_ms=UPLOAD_LEASE_MS, chunk_size=chunk_size, reply="",
                )  # fmt: skip
                # A second claim by the same owner is the same claim: safe to send again.
                claim = run.unwrap(await self.run(UPLOAD_RECORD, keys, args, idempotent=True))
                if run.replayed:
                    return upload_result(cast(dict[str, Any], claim), coupons)
                chunk_size = int(claim[1])
        await self.batches.open(batch, {c.type for c in coupons} or {CouponType.STANDARD}, source)
        if max_redemptions is not None:
            await self.batches.set_rules(batch, cap=max_redemptions)
        try:
            created, positions = await self._chunks(coupons, groups, chunk_size, owner, batch)
        except BaseException:
            if run:  # a retry may resume at once; the chunks recorded stay recorded
                for record in records:
                    with contextlib.suppress(Exception):
                        await self._record(record, "abandon", run.idem, owner)
            raise
        answer = {"created": created, "duplicates": positions, "batch": batch}
        if run:
            reply = orjson.dumps(answer)
            for record in reversed(records):  # the main slot's last: once it answers, all do
                if (await self._record(record, "finish", run.idem, owner, reply))[0] != "ok":
                    raise keyed.in_progress(0)
        return upload_result(answer, coupons)

    def _record(
        self, record: str, action: str, idem: keyed.Idempotency, owner: str, reply: bytes = b""
    ) -> Any:
        keys, args = UPLOAD_RECORD.bind(
            record=record, action=action, fp=idem.fingerprint, owner=owner, ttl_ms=idem.ttl_ms,
            lease_ms="", chunk_size="", reply=reply,
        )  # fmt: skip
        return self.run(UPLOAD_RECORD, keys, args, idempotent=True)

    def _groups(self, coupons: Sequence[CouponIn]) -> list[tuple[Keys, list[int]]]:
        """The positions (0-based) of the coupons each slot takes first, by slot."""
        if not self.layout.sharded:
            return [(self.layout.main, list(range(len(coupons))))]
        by_shard: dict[str, list[int]] = {}
        for i, c in enumerate(coupons):
            by_shard.setdefault(self.layout.home(c.code).tag, []).append(i)
        return [(k, by_shard[k.tag]) for k in self.layout.shards if k.tag in by_shard]

    async def _chunks(
        self,
        coupons: Sequence[CouponIn],
        groups: list[tuple[Keys, list[int]]],
        chunk_size: int,
        owner: str,
        batch: str,
    ) -> tuple[int, list[int]]:
        """Created, and the 1-based positions of duplicates in ``coupons``."""
        created = 0
        duplicates: list[int] = []
        upload_id = uuid.uuid4().hex[:16]
        sharded = self.layout.sharded
        plan = [
            (k, chunk, sharded) for k, positions in groups for chunk in _split(positions, chunk_size, coupons)
        ]
        part = 0
        claimed: list[int] = []
        while plan:
            parts = part + len(plan)
            for k, chunk, claiming in plan:
                part += 1
                made, duplicate, claims = await self._part(
                    k, coupons, chunk, f"{part}/{parts}", upload_id, owner, claiming, created, batch
                )
                created += made
                duplicates += duplicate
                claimed += claims
            # Then the MEGADEAL coupons their shards claimed, in the main slot.
            plan = [
                (self.layout.main, chunk, False) for chunk in _split(sorted(claimed), chunk_size, coupons)
            ]
            claimed = []
        return created, sorted(duplicates)

    async def _part(
        self,
        k: Keys,
        coupons: Sequence[CouponIn],
        chunk: list[int],
        part: str,
        upload_id: str,
        owner: str,
        claiming: bool,
        created: int,
        batch: str,
    ) -> tuple[int, list[int], list[int]]:
        """Store one chunk in slot ``k``: created, 1-based positions of duplicates, positions claimed."""
        lines = [upload_line(coupons[i]) for i in chunk]
        made, duplicates, claims = await self.store_lines(
            k, lines, batch=batch, part=part, upload_id=upload_id, owner=owner, claiming=claiming,
            created=created,
        )  # fmt: skip
        return made, [chunk[i] + 1 for i in duplicates], [chunk[i] for i in claims]

    async def store_lines(
        self,
        k: Keys,
        lines: list[str],
        *,
        batch: str,
        part: str,
        upload_id: str,
        owner: str = "",
        claiming: bool = False,
        created: int = 0,
        quota: int | None = None,
        check_memory: bool = True,
    ) -> tuple[int, list[int], list[int]]:
        """One upload.lua call: ``lines`` (upload_line's) into slot ``k``, which stores at most
        ``quota`` of the batch in all when given (a generation). Created, then the 0-based
        indices in ``lines`` of the duplicates and of the MEGADEAL codes claimed.
        ``created``: this upload's coupons stored so far, for StoreFull's message;
        ``check_memory``: StoreFull first if Redis holds UPLOAD_MEMORY_SHARE of its maxmemory."""
        share = self.ctx.options.upload_memory_share
        if share < 1 and check_memory:
            memory = await self.upkeep.memory_of(k)
            stop_at = self.upkeep.uploads_stop_at(memory)
            if stop_at is not None and memory.used >= stop_at:
                raise StoreFull(
                    f"Redis uses {memory.used} of its {memory.max} bytes, and uploads stop at "
                    f"{share:.0%} of it (allocations and redemptions go on); "
                    f"{created} coupons of this upload were stored before it stopped "
                    f"(sent again, they come back as duplicates; with the same Idempotency-Key, "
                    f"the upload resumes)",
                    created=created,
                )
        keys, args = UPLOAD.bind(
            stats=k.stats,
            audit_stream=k.audit,
            claims=k.megadeal_claims,
            prefix=k.coupon_prefix,
            audit_cap=self.ctx.audit_cap.value,
            upload_id=upload_id,
            part=part,
            available_prefix=k.available_prefix,
            due_prefix=k.due_prefix,
            owner=owner,
            lease_ms=UPLOAD_LEASE_MS,
            claimed_type=CouponType.MEGADEAL.value if claiming else "",
            slot=k.slot,
            batch=batch,
            quota="" if quota is None else quota,
            lines=lines,
        )
        # Keyed, a chunk whose attempt's lease ran out (a retry took over) raises 409.
        reply = await self.run(UPLOAD, keys, args)
        marks = [int(i) for i in reply[1:]]
        return int(reply[0]), [i - 1 for i in marks if i > 0], [-i - 1 for i in marks if i < 0]


# What one upload.lua call may carry, about: a chunk ends at UPLOAD_CHUNK_SIZE coupons, or
# sooner once its lines could reach this many bytes. Plain coupons never do (about 100 bytes
# each); coupons with long metadata do, so no call takes megabytes of arguments, however the
# metadata was written. A coupon's weight depends on the coupon alone, so a resumed upload
# (Idempotency-Key) chunks exactly as its first attempt did.
CHUNK_BYTES = 512 * 1024
_LINE_BYTES = 160  # a line without metadata, at most (its longest fields: 140 bytes)


def line_weight(c: CouponIn) -> int:
    """The most bytes ``upload_line(c)`` can take: every metadata character escaped (6 bytes)."""
    if not c.metadata:
        return _LINE_BYTES
    return _LINE_BYTES + sum(6 * (len(k) + len(v)) + 6 for k, v in c.metadata.items())


def _split(positions: list[int], size: int, coupons: Sequence[CouponIn]) -> list[list[int]]:
    """``positions`` in chunks of at most ``size`` coupons and, past one coupon, CHUNK_BYTES."""
    chunks: list[list[int]] = []
    chunk: list[int] = []
    weight = 0
    for i in positions:
        w = line_weight(coupons[i])
        if chunk and (len(chunk) == size or weight + w > CHUNK_BYTES):
            chunks.append(chunk)
            chunk, weight = [], 0
        chunk.append(i)
        weight += w
    if chunk:
        chunks.append(chunk)
    return chunks


def upload_line(c: CouponIn) -> str:
    """A coupon as upload.lua reads it: "code type kind value expires_at_ms max_usages
    starts_at_ms metadata" (starts_at_ms 0 without a start; the metadata's JSON, or nothing)."""
    starts = to_ms(c.starts_at) if c.starts_at is not None else 0
    meta = orjson.dumps(c.metadata).decode() if c.metadata else ""
    return (
        f"{c.code} {c.type.value} {c.discount.kind} {c.discount.value} "
        f"{to_ms(c.expires_at)} {c.max_usages} {starts} {meta}"
    )
