"""The coupon store: Python calls to the Lua scripts in lua/, and their results decoded."""

from __future__ import annotations

import contextlib
import functools
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from .autopipeline import AutoPipeline
from .connection import connect, once_more
from .errors import BY_CODE, CouponNotFound, StoreFull
from .idempotency import Idempotency, in_progress, record_args, unwrap
from .keys import CouponField, Keys
from .models import MAX_LISTED_HOLDERS, CouponIn, CouponType, FlatDiscount, PercentDiscount, percent_value
from .results import (
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
from .scripts import Allocated, Changed, Redeemed, Scripts, pairs
from .settings import Settings

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
        upload_chunk_size: int = 100,
        upload_memory_share: float = 0.9,
        purge_batch_size: int = 1000,
        audit_max_len: int = 100_000,
        max_allocations_per_user: int = 0,
    ) -> None:
        self.redis = redis
        self.upload_memory_share = upload_memory_share
        self.keys = keys
        self.scripts = Scripts(redis)
        self.upload_chunk_size = upload_chunk_size
        self.purge_batch_size = purge_batch_size
        self.audit_max_len = audit_max_len
        self.max_allocations_per_user = max_allocations_per_user
        self._hot = AutoPipeline(redis)  # allocations and redemptions, the calls made by the thousand
        # Constant script arguments of the hot paths, encoded once (redis-py passes bytes as is).
        self._allocate_keys = {
            t: [k.encode() for k in (keys.available(t), keys.exhausted, keys.stats, keys.audit)]
            for t in CouponType
        }
        self._coupon_prefix = keys.coupon_prefix.encode()
        self._stats_audit = [keys.stats.encode(), keys.audit.encode()]
        self._audit_cap = str(audit_max_len).encode()
        self._type_names = {t: t.value.encode() for t in CouponType}
        self._max_per_user = str(max_allocations_per_user).encode()
        self._held_prefixes = {t: keys.held_type_prefix(t).encode() for t in CouponType}
        self._tracked_prefix = keys.tracked_prefix.encode()
        self._draining = {t: keys.draining(t).encode() for t in CouponType}
        self._types_spaced = " ".join(_TYPES)

    @classmethod
    def from_settings(cls, settings: Settings, max_connections: int | None = None) -> Store:
        """The store of ``settings``' pool, on a client of its own (``max_connections``)."""
        redis = connect(settings, max_connections or settings.redis_max_connections, settings.redis_timeout_s)
        return cls(
            redis,
            Keys(settings.key_namespace),
            upload_chunk_size=settings.upload_chunk_size,
            upload_memory_share=settings.upload_memory_share,
            purge_batch_size=settings.purge_batch_size,
            audit_max_len=settings.audit_max_len,
            max_allocations_per_user=settings.max_allocations_per_user,
        )

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def load_scripts(self) -> None:
        """Load every script into Redis now, so the first requests need no NOSCRIPT retry."""
        for script in self.scripts.all():
            await self.redis.script_load(script.script)

    async def upload(self, coupons: Sequence[CouponIn], idem: Idempotency | None = None) -> UploadResult:
        """Store new coupons in chunks, one script call each, so Redis serves others in between.

        With an Idempotency-Key, each chunk's outcome is recorded by the call that stores it:
        a retry after a partial failure stores only the chunks not recorded yet, and answers
        what one complete upload would have.
        """
        owner = uuid.uuid4().hex[:16]
        chunk_size = self.upload_chunk_size
        if idem:
            claim = idem.unwrap(
                await once_more(
                    lambda: self.scripts.upload_record(
                        keys=[idem.record],
                        args=["claim", idem.fingerprint, owner, idem.ttl_ms, UPLOAD_LEASE_MS, chunk_size],
                    ),
                    idempotent=True,  # a second claim by the same owner is the same claim
                )
            )
            if idem.replayed:
                return _upload_result(cast(dict[str, Any], claim), coupons)
            chunk_size = int(claim[1])
        try:
            created, positions = await self._upload_chunks(coupons, chunk_size, owner, idem)
        except BaseException:
            if idem:  # a retry may resume at once; the chunks recorded stay recorded
                with contextlib.suppress(Exception):
                    await self.scripts.upload_record(
                        keys=[idem.record], args=["abandon", idem.fingerprint, owner, idem.ttl_ms]
                    )
            raise
        answer = {"created": created, "duplicates": positions}
        if idem:
            reply = orjson.dumps(answer)
            args: list[str | int | bytes] = ["finish", idem.fingerprint, owner, idem.ttl_ms, "", "", reply]
            done = await once_more(
                lambda: self.scripts.upload_record(keys=[idem.record], args=args), idempotent=True
            )
            if done[0] != "ok":
                raise in_progress(0)
        return _upload_result(answer, coupons)

    async def _upload_chunks(
        self, coupons: Sequence[CouponIn], chunk_size: int, owner: str, idem: Idempotency | None
    ) -> tuple[int, list[int]]:
        """Created, and the 1-based positions of duplicates in ``coupons``."""
        created = 0
        positions: list[int] = []
        keys = [self.keys.stats, self.keys.audit, *self.keys.all_available(), *record_args(idem)[0]]
        upload_id = uuid.uuid4().hex[:16]
        parts = max(1, math.ceil(len(coupons) / chunk_size))
        for part, start in enumerate(range(0, len(coupons), chunk_size), 1):
            memory = await self.memory() if self.upload_memory_share < 1 else None
            stop_at = self.uploads_stop_at(memory) if memory else None
            if memory and stop_at is not None and memory.used >= stop_at:
                raise StoreFull(
                    f"Redis uses {memory.used} of its {memory.max} bytes, and uploads stop at "
                    f"{self.upload_memory_share:.0%} of it (allocations and redemptions go on); "
                    f"{created + len(positions)} coupons of this upload were taken before it stopped "
                    f"(sent again, they come back as duplicates; with the same Idempotency-Key, "
                    f"the upload resumes)",
                    created=created,
                )
            chunk = coupons[start : start + chunk_size]
            head: list[str | int] = [
                self.keys.coupon_prefix, self.audit_max_len, upload_id, f"{part}/{parts}",
                self._types_spaced, owner, UPLOAD_LEASE_MS,
            ]  # fmt: skip
            args = head + [
                f"{c.code} {c.type.value} {c.discount.kind} {c.discount.value} "
                f"{to_ms(c.expires_at)} {c.max_usages}"
                for c in chunk
            ]
            send = functools.partial(self.scripts.upload, keys=keys, args=args)
            reply = await once_more(send, idempotent=idem is not None)
            if reply[0] == "idempotency_key_in_progress":  # its lease ran out, and a retry took over
                raise in_progress(UPLOAD_LEASE_MS)
            created += int(reply[0])
            positions += [start + int(i) for i in reply[1:]]
        return created, positions

    async def allocate(
        self, user_id: str, coupon_type: CouponType, idem: Idempotency | None = None
    ) -> Allocation:
        """Reserve one usage of the first-expiring available coupon for ``user_id``.

        MEGADEAL coupons are allocated by the MEGADEAL gate instead (megadeal.py).
        """
        if coupon_type is CouponType.MEGADEAL:
            raise ValueError(
                "MEGADEAL allocations go through MegadealGate.allocate, which applies the limits"
            )
        record, extra = record_args(idem)
        keys = self.keys
        reply = await self._hot.run(
            self.scripts.allocate,
            [*self._allocate_keys[coupon_type], keys.held(coupon_type, user_id),
             keys.user_coupons(coupon_type, user_id), self._draining[coupon_type], *record],
            [self._coupon_prefix, user_id, self._type_names[coupon_type], self._audit_cap,
             self._max_per_user, self._held_prefixes[coupon_type], self._tracked_prefix, *extra],
            idem is not None,
        )  # fmt: skip
        reply = unwrap(idem, reply)
        raise_if_error(reply, ALLOCATE_DETAIL, type=coupon_type.value, limit=self.max_allocations_per_user)
        return allocation(Allocated._make(reply[1:]), user_id, coupon_type)

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

    async def _use(
        self,
        script: Any,
        code: str,
        user_id: str,
        coupon_type: CouponType | None,
        idem: Idempotency | None,
    ) -> list[Any]:
        """Run redeem.lua or rollback.lua: same keys, same arguments, same checks."""
        record, extra = record_args(idem)
        reply = await self._hot.run(
            script,
            [self.keys.coupon(code), *self._stats_audit, *record],
            [user_id, self._type_names[coupon_type] if coupon_type else b"", code, self._audit_cap, *extra],
            idem is not None,
        )
        reply = unwrap(idem, reply)
        raise_if_error(reply, _USE_DETAIL, code=code)
        return reply

    async def release(
        self, code: str, user_id: str, coupon_type: CouponType | None, idem: Idempotency | None = None
    ) -> Release:
        """Give the user's unredeemed allocation of ``code`` back to the pool."""
        record, extra = record_args(idem)
        keys = self.keys
        per_type = [
            k for t in CouponType
            for k in (keys.available(t), keys.draining(t), keys.held(t, user_id),
                      keys.user_coupons(t, user_id))
        ]  # fmt: skip
        reply = await self._hot.run(
            self.scripts.release,
            [keys.coupon(code), keys.exhausted, keys.stats, keys.audit, *per_type, *record],
            [user_id, coupon_type.value if coupon_type else "", code, self.audit_max_len, self._types_spaced,
             keys.tracked_prefix, *extra],
            idem is not None,
        )  # fmt: skip
        reply = unwrap(idem, reply)
        raise_if_error(reply, _USE_DETAIL, code=code)
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
        """A page of the coupons ``user_id`` holds, newest allocation first."""
        after_ms, _, after_code = after.partition(".") if after else ("", "", "")
        reply = await self.scripts.user_coupons(
            keys=[self.keys.user_coupons(t, user_id) for t in CouponType],
            args=[self.keys.coupon_prefix, user_id, limit, after_ms, after_code],
        )
        now = datetime.now(UTC)
        listed = []
        for i in range(2, len(reply), 7):
            code, allocated_ms, ctype, kind, value, expires_ms, state = reply[i : i + 7]
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
        following = f"{int(float(reply[0]))}.{reply[1]}" if reply[0] else None
        return UserCouponsPage.model_construct(coupons=listed, next=following)

    async def get_coupon(self, code: str) -> Coupon:
        """A coupon with its counts and who holds it."""
        key = self.keys.coupon(code)
        fields: list[Any] = await self.redis.hmget(key, _COUPON_FIELDS)
        if fields[0] is None:
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
        keys = [self.keys.stats, *self._available_and_draining()]
        counters = pairs(await self.scripts.stats(keys=keys, args=_TYPES))
        types = {
            t: TypeStats.model_validate(
                {name: int(counters.get(f"{t.value}:{name}", 0)) for name in TypeStats.model_fields}
            )
            for t in CouponType
        }
        totals = TypeStats.model_construct(
            **{f: sum(getattr(s, f) for s in types.values()) for f in TypeStats.model_fields}
        )
        return Stats.model_construct(types=types, totals=totals)

    async def purge(self) -> PurgeResult:
        """Remove expired coupons, a batch per script call, until none is left."""
        purged = dict.fromkeys(CouponType, 0)
        retired = dict.fromkeys(CouponType, 0)
        keys = [self.keys.stats, self.keys.audit, self.keys.exhausted, *self._available_and_draining()]
        k = self.keys
        args: list[str | int] = [k.coupon_prefix, self.purge_batch_size, self.audit_max_len, k.tracked_prefix]
        args += _TYPES
        while True:
            reply = pairs(await self.scripts.purge(keys=keys, args=args))
            for t in CouponType:
                purged[t] += int(reply[f"purged:{t.value}"])
                retired[t] += int(reply[f"retired:{t.value}"])
            if int(reply["examined"]) < self.purge_batch_size:
                return PurgeResult.model_construct(purged=purged, retired=retired)

    def _available_and_draining(self) -> list[str]:
        return [k for t in CouponType for k in (self.keys.available(t), self.keys.draining(t))]

    async def try_purge_lock(self, seconds: float) -> bool:
        """Claim the purge for the next ``seconds``: True for one caller across all processes."""
        return bool(await self.redis.set(self.keys.purge_lock, "1", nx=True, px=max(1, int(seconds * 1000))))

    async def audit(self, limit: int, after: str | None) -> AuditPage:
        """Audit entries after the id ``after``, or the last ``limit`` ones; oldest first."""
        if after is None:
            raw = list(reversed(await self.redis.xrevrange(self.keys.audit, count=limit) or []))
        elif after == _LAST_STREAM_ID:  # nothing can follow it (and Redis refuses "(" before it)
            raw = []
        else:
            raw = await self.redis.xrange(self.keys.audit, min=f"({after}", count=limit) or []
        entries = [_audit_entry(cast(str, id_), cast(dict[str, str], fields)) for id_, fields in raw]
        return AuditPage.model_construct(entries=entries, next=entries[-1].id if entries else after)

    async def memory(self) -> Memory:
        """What Redis uses, and its maxmemory (0: no limit)."""
        info = await self.redis.info("memory")
        return Memory(used=int(info["used_memory"]), max=int(info["maxmemory"]))

    def uploads_stop_at(self, memory: Memory) -> int | None:
        """The bytes of Redis memory from which uploads are refused; None without a limit."""
        return int(memory.max * self.upload_memory_share) if memory.max else None


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


def _audit_entry(entry_id: str, fields: dict[str, str]) -> AuditEntry:
    """An AuditEntry from a stream entry; counts become integers."""
    values: dict[str, Any] = {
        k: int(v) if k in _COUNT_FIELDS or k.startswith(("purged_", "retired_")) else v
        for k, v in fields.items()
    }
    return AuditEntry.model_construct(id=entry_id, time=from_ms(entry_id.partition("-")[0]), **values)
