"""The coupon store: Python calls to the Lua scripts in lua/, and their results decoded."""

from __future__ import annotations

import contextlib
import functools
import math
import random
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot

from ..errors import BY_CODE, CouponNotFound, StoreFull
from ..models import MAX_LISTED_HOLDERS, CouponIn, CouponType, FlatDiscount, PercentDiscount, percent_value
from ..results import (
    Allocation,
    AuditEntry,
    AuditPage,
    Coupon,
    Holder,
    PurgeResult,
    Redemption,
    Release,
    Rollback,
    Stats,
    TypeStats,
    UploadResult,
    UserCoupon,
    UserCouponsPage,
    UserCouponStatus,
)
from ..settings import Settings
from .autopipeline import NOT_RUN, AutoPipeline
from .connection import NotSent, connect
from .idempotency import Idempotency, in_progress, record_args, reused, unwrap
from .keys import CouponField, Keys, Layout
from .scripts import Allocated, Changed, Redeemed, Scripts, guarded, pairs

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_TYPES = [t.value for t in CouponType]
_COUPON_FIELDS = [
    CouponField.TYPE, CouponField.DISCOUNT_KIND, CouponField.DISCOUNT_VALUE, CouponField.EXPIRES,
    CouponField.MAX_USAGES, CouponField.ALLOCATED, CouponField.USED, CouponField.CREATED,
]  # fmt: skip


def to_ms(moment: datetime) -> int:
    return (moment - EPOCH) // _MS


def from_ms(ms: int | str) -> datetime:
    return EPOCH + timedelta(milliseconds=int(ms))


@functools.lru_cache(maxsize=4096)  # discounts are immutable, and most pools have few distinct ones
def discount(kind: str, value: str) -> FlatDiscount | PercentDiscount:
    if kind == "flat":
        return FlatDiscount.model_construct(kind="flat", value=value)
    return PercentDiscount.model_construct(kind="percent", value=percent_value(value))


def allocation(reply: Allocated, user_id: str, coupon_type: CouponType) -> Allocation:
    return Allocation(
        code=reply.code,
        type=coupon_type,
        discount=discount(reply.discount_kind, reply.discount_value),
        expires_at=from_ms(reply.expires_ms),
        user_id=user_id,
        allocated_at=from_ms(reply.allocated_ms),
    )


def raise_if_error(reply: list[Any], details: dict[str, str], **values: Any) -> None:
    """A script's error reply ({error code}) as the CouponError of that code, its detail
    from ``details`` filled in with ``values``."""
    if reply[0] != "ok":
        raise BY_CODE[reply[0]](details.get(reply[0], "").format(**values))


ALLOCATE_DETAIL = {
    "pool_empty": "no {type} coupon is available for this user",
    "user_limit_reached": "this user holds {limit} {type} coupons, the most one user may hold at once",
}
UPLOAD_LEASE_MS = 30_000  # an upload attempt owns its key this long after its last chunk


class Store:
    """All coupon state lives in Redis; every change is one atomic script call."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        shards: int = 1,
        upload_chunk_size: int = 100,
        upload_memory_share: float = 0.9,
        purge_batch_size: int = 1000,
        audit_max_len: int = 100_000,
        max_allocations_per_user: int = 0,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        retry_for_s: float = 2.0,
    ) -> None:
        """``keys``: the pool's main slot; ``shards``: how many the FREE and STANDARD pools have."""
        self.redis = redis
        self.upload_memory_share = upload_memory_share
        self.keys = keys
        self.layout = Layout(keys.namespace, shards)
        self.scripts = Scripts(redis)
        self.upload_chunk_size = upload_chunk_size
        self.purge_batch_size = purge_batch_size
        self.audit_max_len = audit_max_len
        self.max_allocations_per_user = max_allocations_per_user
        # Every script call goes through it: a pipeline per event-loop turn and node.
        self._hot = AutoPipeline(
            redis,
            wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
            retry_for_s=retry_for_s,
            keys_of=guarded,
        )
        self._run = self._hot.run
        self._slot = {k.tag: _SlotArgs(k) for k in self.layout.slots}
        self._audit_cap = str(audit_max_len).encode()
        self._type_names = {t: t.value.encode() for t in CouponType}
        self._max_per_user = str(max_allocations_per_user).encode()
        self._types_spaced = " ".join(_TYPES)
        self._by_master: list[list[int]] = []
        self._by_master_at = -math.inf

    @classmethod
    def from_settings(cls, settings: Settings, max_connections: int | None = None) -> Store:
        """The store of ``settings``' pool, on a client of its own (``max_connections``)."""
        redis = connect(settings, max_connections or settings.redis_max_connections, settings.redis_timeout_s)
        return cls(
            redis,
            Keys(settings.key_namespace),
            shards=settings.pool_shards,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
            retry_for_s=settings.redis_timeout_s,
            upload_chunk_size=settings.upload_chunk_size,
            upload_memory_share=settings.upload_memory_share,
            purge_batch_size=settings.purge_batch_size,
            audit_max_len=settings.audit_max_len,
            max_allocations_per_user=settings.max_allocations_per_user,
        )

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def load_scripts(self) -> None:
        """Load every script into Redis (every master of a cluster) now, so the first
        requests need no NOSCRIPT retry; and refuse a pool laid out in another number of
        shards (its coupons would be looked for in the wrong ones)."""
        for script in self.scripts.all():
            await self.redis.script_load(script.script)
        await self.check_layout()

    async def check_layout(self) -> None:
        """Refuse (LayoutMismatch) a pool whose data is laid out in another number of shards.

        A sharded pool records its shard count in the main slot on first use; a pool of
        one shard records nothing (its keys are the same as before sharding existed).
        """
        shards = len(self.layout.shards)
        recorded = await self.redis.get(self.keys.shard_count)
        if recorded is None and shards > 1:
            k = self.keys
            if await self.redis.exists(k.available(CouponType.FREE), k.available(CouponType.STANDARD)):
                recorded = "1"  # FREE or STANDARD coupons in the main slot: a pool of one shard
            elif await self.redis.set(k.shard_count, shards, nx=True):
                return
            else:
                recorded = await self.redis.get(k.shard_count)
        if recorded is not None and int(recorded) != shards:
            raise LayoutMismatch(
                f"the pool {self.keys.namespace!r} holds data in {int(recorded)} shard(s), and POOL_SHARDS "
                f"is {shards}: set POOL_SHARDS={int(recorded)} (the shard count is fixed once a pool "
                f"has data)"
            )

    async def claim_key(self, idem: Idempotency | None) -> None:
        """Refuse (422) an Idempotency-Key first sent with another request, in a sharded pool.

        There each operation keeps its records in the slots it writes, so two requests may
        share no slot; the key is claimed in a shard of its own with the request's
        fingerprint (SET NX GET, kept as long as the records). With one shard the records
        themselves tell (the scripts' idem_lookup).
        """
        if idem is None or not self.layout.sharded:
            return
        shards = self.layout.shards
        claim = shards[zlib.crc32(idem.record.encode()) % len(shards)].key_claim(idem.record)
        first = await self.redis.set(claim, idem.fingerprint, nx=True, get=True, px=idem.ttl_ms)
        if first is not None and first != idem.fingerprint:
            raise reused()

    async def upload(self, coupons: Sequence[CouponIn], idem: Idempotency | None = None) -> UploadResult:
        """Store new coupons in chunks, one script call each, so Redis serves others in between.

        Each coupon goes to its slot: its shard, or for a MEGADEAL coupon the main slot. In a
        sharded pool a MEGADEAL coupon is first claimed in its code's shard (so a code is
        unique pool-wide), then stored in the main slot.
        With an Idempotency-Key, each chunk's outcome is recorded by the call that stores it
        (in its slot's copy of the record): a retry after a partial failure stores only the
        chunks not recorded yet, and answers what one complete upload would have.
        """
        await self.claim_key(idem)
        owner = uuid.uuid4().hex[:16]
        chunk_size = self.upload_chunk_size
        groups = self._upload_groups(coupons)
        records: list[str] = []
        if idem:
            records = [idem.record] + [k.record_here(idem.record) for k, _ in groups if k is not self.keys]
            for record in records:  # the main slot's first: it holds the answer
                claim = idem.unwrap(
                    await self._run(
                        self.scripts.upload_record,
                        [record],
                        ["claim", idem.fingerprint, owner, idem.ttl_ms, UPLOAD_LEASE_MS, chunk_size],
                        True,  # a second claim by the same owner is the same claim
                    )
                )
                if idem.replayed:
                    return _upload_result(cast(dict[str, Any], claim), coupons)
                chunk_size = int(claim[1])
        try:
            created, positions = await self._upload_chunks(coupons, groups, chunk_size, owner, idem)
        except BaseException:
            if idem:  # a retry may resume at once; the chunks recorded stay recorded
                for record in records:
                    with contextlib.suppress(Exception):
                        await self._run(
                            self.scripts.upload_record,
                            [record],
                            ["abandon", idem.fingerprint, owner, idem.ttl_ms],
                        )
            raise
        answer = {"created": created, "duplicates": positions}
        if idem:
            reply = orjson.dumps(answer)
            args: list[str | int | bytes] = ["finish", idem.fingerprint, owner, idem.ttl_ms, "", "", reply]
            for record in reversed(records):  # the main slot's last: once it answers, all do
                done = await self._run(self.scripts.upload_record, [record], args, True)
                if done[0] != "ok":
                    raise in_progress(0)
        return _upload_result(answer, coupons)

    def _upload_groups(self, coupons: Sequence[CouponIn]) -> list[tuple[Keys, list[int]]]:
        """The positions (0-based) of the coupons each slot takes first, by slot."""
        if not self.layout.sharded:
            return [(self.keys, list(range(len(coupons))))]
        by_shard: dict[str, list[int]] = {}
        for i, c in enumerate(coupons):
            by_shard.setdefault(self.layout.home(c.code).tag, []).append(i)
        return [(k, by_shard[k.tag]) for k in self.layout.shards if k.tag in by_shard]

    async def _upload_chunks(
        self,
        coupons: Sequence[CouponIn],
        groups: list[tuple[Keys, list[int]]],
        chunk_size: int,
        owner: str,
        idem: Idempotency | None,
    ) -> tuple[int, list[int]]:
        """Created, and the 1-based positions of duplicates in ``coupons``."""
        created = 0
        duplicates: list[int] = []
        upload_id = uuid.uuid4().hex[:16]
        plan = [
            (k, chunk, self.layout.sharded)
            for k, positions in groups
            for chunk in _chunks(positions, chunk_size)
        ]
        part = 0
        claimed: list[int] = []
        while plan:
            parts = part + len(plan)
            for k, chunk, claiming in plan:
                part += 1
                made, duplicate, claims = await self._upload_part(
                    k, coupons, chunk, f"{part}/{parts}", upload_id, owner, idem, claiming, created
                )
                created += made
                duplicates += duplicate
                claimed += claims
            # Then the MEGADEAL coupons their shards claimed, in the main slot.
            plan = [(self.keys, chunk, False) for chunk in _chunks(sorted(claimed), chunk_size)]
            claimed = []
        return created, sorted(duplicates)

    async def _upload_part(
        self,
        k: Keys,
        coupons: Sequence[CouponIn],
        chunk: list[int],
        part: str,
        upload_id: str,
        owner: str,
        idem: Idempotency | None,
        claiming: bool,
        created: int,
    ) -> tuple[int, list[int], list[int]]:
        """Store one chunk in slot ``k``: created, 1-based positions of duplicates, positions claimed."""
        if self.upload_memory_share < 1:
            memory = await self._memory_of(k)
            stop_at = self.uploads_stop_at(memory)
            if stop_at is not None and memory.used >= stop_at:
                raise StoreFull(
                    f"Redis uses {memory.used} of its {memory.max} bytes, and uploads stop at "
                    f"{self.upload_memory_share:.0%} of it (allocations and redemptions go on); "
                    f"{created} coupons of this upload were stored before it stopped "
                    f"(sent again, they come back as duplicates; with the same Idempotency-Key, "
                    f"the upload resumes)",
                    created=created,
                )
        record, _ = record_args(idem, k)
        keys = [k.stats, k.audit, *k.all_available(), k.megadeal_claims, *record]
        head: list[str | int] = [
            k.coupon_prefix, self.audit_max_len, upload_id, part, self._types_spaced, owner, UPLOAD_LEASE_MS,
            CouponType.MEGADEAL.value if claiming else "",
        ]  # fmt: skip
        args = head + [
            f"{c.code} {c.type.value} {c.discount.kind} {c.discount.value} "
            f"{to_ms(c.expires_at)} {c.max_usages}"
            for c in (coupons[i] for i in chunk)
        ]
        reply = await self._run(self.scripts.upload, keys, args, idem is not None)
        if reply[0] == "idempotency_key_in_progress":  # its lease ran out, and a retry took over
            raise in_progress(UPLOAD_LEASE_MS)
        marks = [int(i) for i in reply[1:]]
        return (
            int(reply[0]),
            [chunk[i - 1] + 1 for i in marks if i > 0],
            [chunk[-i - 1] for i in marks if i < 0],
        )

    async def allocate(
        self, user_id: str, coupon_type: CouponType, idem: Idempotency | None = None
    ) -> Allocation:
        """Reserve one usage of the first-expiring available coupon of a shard for ``user_id``.

        The first shard is picked at random (a master at random, then one of its shards); the
        others are tried in turn before the answer is pool_empty. With an Idempotency-Key the
        order follows from the key, so a retry walks the same shards and meets each one's
        recorded answer. MEGADEAL coupons are allocated by the MEGADEAL gate (megadeal.py).
        """
        if coupon_type is CouponType.MEGADEAL:
            raise ValueError(
                "MEGADEAL allocations go through MegadealGate.allocate, which applies the limits"
            )
        await self.claim_key(idem)
        shards = self.layout.shards
        first = zlib.crc32(idem.record.encode()) % len(shards) if idem else self._first_shard()
        unreachable: Exception | None = None
        for n in range(len(shards)):
            k = shards[(first + n) % len(shards)]
            if idem:
                idem.replayed = False  # the last shard's answer says
            try:
                # Unkeyed, a shard that cannot run it now is passed over at once (the last is waited for).
                wait = None if idem or n == len(shards) - 1 else 0.0
                reply = unwrap(idem, await self._allocate_in(k, user_id, coupon_type, idem, wait))
            except (NotSent, *NOT_RUN) as exc:
                if idem or n == len(shards) - 1:  # a keyed call keeps its order: a retry walks it again
                    raise
                unreachable = exc  # its master is failing over, or its slot moving: try the next
                continue
            if reply[0] != "pool_empty":
                break
        if unreachable is not None and reply[0] == "pool_empty":
            raise unreachable  # some shard could not be asked: not known to be empty
        raise_if_error(reply, ALLOCATE_DETAIL, type=coupon_type.value, limit=self.max_allocations_per_user)
        return allocation(Allocated._make(reply[1:]), user_id, coupon_type)

    async def _allocate_in(
        self, k: Keys, user_id: str, coupon_type: CouponType, idem: Idempotency | None, wait: float | None
    ) -> list[Any]:
        a = self._slot[k.tag]
        record, extra = record_args(idem, k)
        return cast(list[Any], await self._run(
            self.scripts.allocate,
            [*a.allocate[coupon_type], k.held(coupon_type, user_id), k.user_coupons(coupon_type, user_id),
             a.draining[coupon_type], *record],
            [a.coupon_prefix, user_id, self._type_names[coupon_type], self._audit_cap,
             self._max_per_user, a.held_prefixes[coupon_type], a.tracked_prefix, *extra],
            idem is not None,
            wait,
        ))  # fmt: skip

    def _first_shard(self) -> int:
        """A shard at random, each master's shards taking an equal share together: with 16
        shards over 3 masters (5, 5 and 6 of them) each master still serves a third."""
        count = len(self.layout.shards)
        if count == 1:
            return 0
        cluster = self._hot.cluster
        if cluster is None:
            return random.randrange(count)
        now = time.monotonic()
        if now - self._by_master_at > 1.0:  # the slot map changes on failover and resharding
            groups: dict[str, list[int]] = {}
            try:
                for i, k in enumerate(self.layout.shards):
                    node = cluster.nodes_manager.get_node_from_slot(key_slot(k.stats.encode()))
                    groups.setdefault(node.name, []).append(i)
            except Exception:  # no slot map yet: spread over shards
                groups = {"": list(range(count))}
            self._by_master, self._by_master_at = list(groups.values()), now
        return random.choice(random.choice(self._by_master))

    async def redeem(
        self, code: str, user_id: str, coupon_type: CouponType | None, idem: Idempotency | None = None
    ) -> Redemption:
        """Record that ``user_id`` used the coupon ``code`` allocated to them."""
        reply = await self._use(self.scripts.redeem, code, user_id, coupon_type, idem)
        redeemed = Redeemed._make(reply[1:])
        return Redemption(
            code=code,
            type=CouponType(redeemed.type),
            user_id=user_id,
            redeemed_at=from_ms(redeemed.redeemed_ms),
            used=int(redeemed.used),
            max_usages=int(redeemed.max_usages),
        )

    async def rollback(
        self, code: str, user_id: str, coupon_type: CouponType | None, idem: Idempotency | None = None
    ) -> Rollback:
        """Undo the user's redemption of ``code``: the allocation is unredeemed again."""
        reply = await self._use(self.scripts.rollback, code, user_id, coupon_type, idem)
        undone = Changed._make(reply[1:])
        return Rollback(
            code=code,
            type=CouponType(undone.type),
            user_id=user_id,
            rolled_back_at=from_ms(undone.at_ms),
            used=int(undone.total),
            max_usages=int(undone.max_usages),
        )

    def _slots_of(self, code: str, coupon_type: CouponType | None) -> list[Keys]:
        """Where coupon ``code`` may be: its slot, or without a type its shard, then the main slot."""
        if coupon_type is not None:
            return [self.layout.of(code, coupon_type)]
        home = self.layout.home(code)
        return [home] if home is self.keys else [home, self.keys]

    async def _on_coupon(
        self,
        code: str,
        coupon_type: CouponType | None,
        idem: Idempotency | None,
        call: Callable[[Keys, list[str], list[str | int]], Awaitable[list[Any]]],
    ) -> list[Any]:
        """``call(slot, record keys, record args)`` in each slot coupon ``code`` may be in, until
        one has it; its reply, or its error raised. Keyed, each slot keeps its own answer."""
        await self.claim_key(idem)
        for k in self._slots_of(code, coupon_type):
            if idem:
                idem.replayed = False  # the last slot's answer says
            reply = unwrap(idem, await call(k, *record_args(idem, k)))
            if reply[0] != "coupon_not_found":
                break
        raise_if_error(reply, _USE_DETAIL, code=code)
        return reply

    async def _use(
        self,
        script: Any,
        code: str,
        user_id: str,
        coupon_type: CouponType | None,
        idem: Idempotency | None,
    ) -> list[Any]:
        """Run redeem.lua or rollback.lua: same keys, same arguments, same checks."""
        ctype = self._type_names[coupon_type] if coupon_type else b""

        def call(k: Keys, record: list[str], extra: list[str | int]) -> Awaitable[list[Any]]:
            return self._run(
                script,
                [k.coupon(code), *self._slot[k.tag].stats_audit, *record],
                [user_id, ctype, code, self._audit_cap, *extra],
                idem is not None,
            )

        return await self._on_coupon(code, coupon_type, idem, call)

    async def release(
        self, code: str, user_id: str, coupon_type: CouponType | None, idem: Idempotency | None = None
    ) -> Release:
        """Give the user's unredeemed allocation of ``code`` back to the pool."""

        def call(k: Keys, record: list[str], extra: list[str | int]) -> Awaitable[list[Any]]:
            per_type = [
                key for t in CouponType
                for key in (k.available(t), k.draining(t), k.held(t, user_id), k.user_coupons(t, user_id))
            ]  # fmt: skip
            return self._run(
                self.scripts.release,
                [k.coupon(code), k.exhausted, k.stats, k.audit, *per_type, *record],
                [user_id, coupon_type.value if coupon_type else "", code, self.audit_max_len,
                 self._types_spaced, k.tracked_prefix, *extra],
                idem is not None,
            )  # fmt: skip

        reply = await self._on_coupon(code, coupon_type, idem, call)
        released = Changed._make(reply[1:])
        return Release(
            code=code,
            type=CouponType(released.type),
            user_id=user_id,
            released_at=from_ms(released.at_ms),
            allocated=int(released.total),
            max_usages=int(released.max_usages),
        )

    async def user_coupons(self, user_id: str, limit: int, after: str | None) -> UserCouponsPage:
        """A page of the coupons ``user_id`` holds, newest allocation first (every slot's, merged)."""
        after_ms, _, after_code = after.partition(".") if after else ("", "", "")
        replies = [
            await self._run(
                self.scripts.user_coupons,
                [k.user_coupons(t, user_id) for t in CouponType],
                [k.coupon_prefix, user_id, limit, after_ms, after_code],
            )
            for k in self.layout.slots
        ]
        found = [tuple(reply[i : i + 7]) for reply in replies for i in range(2, len(reply), 7)]
        # The scripts' order: newest first, then the greater code first.
        found.sort(key=lambda e: (int(e[1]), e[0]), reverse=True)
        more = len(found) > limit or any(reply[0] for reply in replies)
        now = datetime.now(UTC)
        listed = []
        for code, allocated_ms, ctype, kind, value, expires_ms, state in found[:limit]:
            _, _, redeemed_ms = state.partition(":")
            expires_at = from_ms(expires_ms)
            status: UserCouponStatus = (
                "redeemed" if redeemed_ms else "expired" if expires_at <= now else "allocated"
            )
            listed.append(
                UserCoupon.model_construct(
                    code=code,
                    type=CouponType(ctype),
                    discount=discount(kind, value),
                    expires_at=expires_at,
                    allocated_at=from_ms(allocated_ms),
                    redeemed_at=from_ms(redeemed_ms) if redeemed_ms else None,
                    status=status,
                )
            )
        following = None
        if more and found[:limit]:
            last = found[:limit][-1]
            following = f"{int(float(last[1]))}.{last[0]}"
        elif more:  # every entry met was of a purged coupon: go on after the cursor's place
            following = after
        return UserCouponsPage.model_construct(coupons=listed, next=following)

    async def get_coupon(self, code: str) -> Coupon:
        """A coupon with its counts and who holds it."""
        for k in self._slots_of(code, None):
            key = k.coupon(code)
            fields: list[Any] = await self.redis.hmget(key, _COUPON_FIELDS)
            if fields[0] is not None:
                break
        else:
            raise CouponNotFound(f"there is no coupon {code!r}")
        c = dict(zip(_COUPON_FIELDS, fields, strict=True))
        holders = []
        prefix = CouponField.HOLDER.value
        async for field, state in self.redis.hscan_iter(key, match=f"{prefix}*", count=MAX_LISTED_HOLDERS):
            allocated_ms, _, redeemed_ms = state.partition(":")
            holders.append(
                Holder.model_construct(
                    user_id=field[len(prefix) :],
                    allocated_at=from_ms(allocated_ms),
                    redeemed_at=from_ms(redeemed_ms) if redeemed_ms else None,
                )
            )
            if len(holders) == MAX_LISTED_HOLDERS:
                break
        return Coupon.model_construct(
            code=code,
            type=CouponType(c[CouponField.TYPE]),
            discount=discount(c[CouponField.DISCOUNT_KIND], c[CouponField.DISCOUNT_VALUE]),
            expires_at=from_ms(c[CouponField.EXPIRES]),
            max_usages=int(c[CouponField.MAX_USAGES]),
            allocated=int(c[CouponField.ALLOCATED]),
            used=int(c[CouponField.USED]),
            created_at=from_ms(c[CouponField.CREATED]),
            allocations=sorted(holders, key=lambda h: h.allocated_at),
        )

    async def stats(self) -> Stats:
        """The counters of every slot, summed (each slot's read in one script call)."""
        counters: dict[str, int] = {}
        for k in self.layout.slots:
            keys = [k.stats, *_available_and_draining(k)]
            for name, value in pairs(await self._run(self.scripts.stats, keys, _TYPES)).items():
                counters[name] = counters.get(name, 0) + int(value)
        types = {
            t: TypeStats.model_validate(
                {name: counters.get(f"{t.value}:{name}", 0) for name in TypeStats.model_fields}
            )
            for t in CouponType
        }
        totals = TypeStats.model_construct(
            **{f: sum(getattr(s, f) for s in types.values()) for f in TypeStats.model_fields}
        )
        return Stats.model_construct(types=types, totals=totals)

    async def purge(self) -> PurgeResult:
        """Remove expired coupons, slot by slot, a batch per script call, until none is left."""
        purged = dict.fromkeys(CouponType, 0)
        retired = dict.fromkeys(CouponType, 0)
        for k in self.layout.slots:
            keys = [k.stats, k.audit, k.exhausted, *_available_and_draining(k)]
            args: list[str | int] = [
                k.coupon_prefix,
                self.purge_batch_size,
                self.audit_max_len,
                k.tracked_prefix,
            ]
            args += _TYPES
            while True:
                reply = pairs(await self._run(self.scripts.purge, keys, args))
                for t in CouponType:
                    purged[t] += int(reply[f"purged:{t.value}"])
                    retired[t] += int(reply[f"retired:{t.value}"])
                if int(reply["examined"]) < self.purge_batch_size:
                    break
        return PurgeResult.model_construct(purged=purged, retired=retired)

    async def try_purge_lock(self, seconds: float) -> bool:
        """Claim the purge for the next ``seconds``: True for one caller across all processes."""
        return bool(await self.redis.set(self.keys.purge_lock, "1", nx=True, px=max(1, int(seconds * 1000))))

    async def audit(self, limit: int, after: str | None) -> AuditPage:
        """Audit entries after the id ``after``, or the last ``limit`` ones; oldest first.

        A sharded pool has a stream per slot: their entries are merged by id, then by slot,
        and each id gets the slot's index as a third part (``<ms>-<seq>-<slot>``).
        """
        if not self.layout.sharded:
            if after is not None and after.count("-") == 2:  # a sharded pool's id: its slot part
                after = after.rpartition("-")[0]
            raw = await self._audit_of(self.keys, limit, after)
            entries = [_audit_entry(i, fields) for i, fields in raw]
        else:
            ms_seq, _, slot = (
                (after or "").rpartition("-") if after and after.count("-") == 2 else (after, "", "")
            )
            at = int(slot) if slot else len(self.layout.slots)  # a bare id: after it in every slot
            merged = []
            for n, k in enumerate(self.layout.slots):
                # Entries with the cursor's id in slots after the cursor's come after it too.
                page = await self._audit_of(k, limit, ms_seq, inclusive=n > at)
                merged += [(_id_key(i), n, i, fields) for i, fields in page]
            merged.sort(key=lambda e: (e[0], e[1]))
            merged = merged[-limit:] if after is None else merged[:limit]
            entries = [_audit_entry(f"{i}-{n}", fields, i) for _, n, i, fields in merged]
        return AuditPage.model_construct(entries=entries, next=entries[-1].id if entries else after)

    async def _audit_of(
        self, k: Keys, limit: int, after: str | None, inclusive: bool = False
    ) -> list[tuple[str, dict[str, str]]]:
        if after is None:
            latest = cast(
                list[tuple[str, dict[str, str]]], await self.redis.xrevrange(k.audit, count=limit) or []
            )
            return list(reversed(latest))
        if after == _LAST_STREAM_ID and not inclusive:  # nothing follows it (and Redis refuses "(" before it)
            return []
        bound = after if inclusive else f"({after}"
        return cast(
            list[tuple[str, dict[str, str]]], await self.redis.xrange(k.audit, min=bound, count=limit) or []
        )

    async def memory(self) -> Memory:
        """What Redis uses, and its maxmemory (0: no limit); in a cluster, its fullest master's."""
        cluster = self._hot.cluster
        if cluster is None:
            return _memory(await self.redis.info("memory"))
        found = await cluster.info("memory", target_nodes=RedisCluster.PRIMARIES)
        return max((_memory(info) for info in found.values()), key=lambda m: (m.used / m.max) if m.max else 0)

    async def _memory_of(self, k: Keys) -> Memory:
        """The memory of the node that holds slot ``k``."""
        cluster = self._hot.cluster
        if cluster is None:
            return await self.memory()
        await cluster.initialize()  # the slot map, if no call has loaded it yet
        node = cluster.get_node_from_key(k.stats)
        return _memory(await cluster.info("memory", target_nodes=node))

    def uploads_stop_at(self, memory: Memory) -> int | None:
        """The bytes of Redis memory from which uploads are refused; None without a limit."""
        return int(memory.max * self.upload_memory_share) if memory.max else None


class LayoutMismatch(RuntimeError):
    """POOL_SHARDS differs from the shard count of the pool's data."""


class _SlotArgs:
    """A slot's constant script arguments, encoded once (redis-py passes bytes as is)."""

    def __init__(self, k: Keys) -> None:
        self.allocate = {
            t: [x.encode() for x in (k.available(t), k.exhausted, k.stats, k.audit)] for t in CouponType
        }
        self.coupon_prefix = k.coupon_prefix.encode()
        self.stats_audit = [k.stats.encode(), k.audit.encode()]
        self.held_prefixes = {t: k.held_type_prefix(t).encode() for t in CouponType}
        self.tracked_prefix = k.tracked_prefix.encode()
        self.draining = {t: k.draining(t).encode() for t in CouponType}


def _available_and_draining(k: Keys) -> list[str]:
    return [key for t in CouponType for key in (k.available(t), k.draining(t))]


def _chunks(positions: list[int], size: int) -> list[list[int]]:
    return [positions[start : start + size] for start in range(0, len(positions), size)]


def _memory(info: dict[str, Any]) -> Memory:
    return Memory(used=int(info["used_memory"]), max=int(info["maxmemory"]))


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Memory:
    used: int
    max: int  # 0: no limit


_LAST_STREAM_ID = f"{2**64 - 1}-{2**64 - 1}"
_COUNT_FIELDS = frozenset({"created", "duplicates", "used", "allocated"})
_USE_DETAIL = {
    "coupon_not_found": "there is no coupon {code!r}",
    "type_mismatch": "coupon {code!r} is of another type",
    "not_allocated": "coupon {code!r} is not allocated to this user",
    "already_redeemed": "this user already redeemed coupon {code!r}",
    "not_redeemed": "this user has not redeemed coupon {code!r}",
    "coupon_expired": "coupon {code!r} has expired",
}


def _upload_result(answer: dict[str, Any], coupons: Sequence[CouponIn]) -> UploadResult:
    """An upload's answer from its outcome (created, 1-based positions of duplicates)."""
    duplicates = [coupons[i - 1].code for i in answer["duplicates"]]
    return UploadResult.model_construct(created=answer["created"], duplicates=duplicates)


def _audit_entry(entry_id: str, fields: dict[str, str], stream_id: str | None = None) -> AuditEntry:
    """An AuditEntry from a stream entry; counts become integers."""
    values: dict[str, Any] = {
        k: int(v) if k in _COUNT_FIELDS or k.startswith(("purged_", "retired_")) else v
        for k, v in fields.items()
    }
    return AuditEntry.model_construct(
        id=entry_id, time=from_ms((stream_id or entry_id).partition("-")[0]), **values
    )
