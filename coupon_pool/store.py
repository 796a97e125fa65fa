"""The coupon store: Python calls to the Lua scripts in lua/, and their results decoded."""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from redis.asyncio import Redis

from .autopipeline import AutoPipeline
from .connection import connect
from .errors import BY_CODE, CouponNotFound, StoreFull
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
    Stats,
    TypeStats,
    UploadResult,
)
from .scripts import Allocated, Redeemed, Scripts, pairs
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


def raise_if_error(reply: list[Any], detail: str) -> None:
    """A script's error reply ({error code}) as the CouponError of that code."""
    if reply[0] != "ok":
        raise BY_CODE[reply[0]](detail)


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
    ) -> None:
        self.redis = redis
        self.upload_memory_share = upload_memory_share
        self.keys = keys
        self.scripts = Scripts(redis)
        self.upload_chunk_size = upload_chunk_size
        self.purge_batch_size = purge_batch_size
        self.audit_max_len = audit_max_len
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
        )

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def load_scripts(self) -> None:
        """Load every script into Redis now, so the first requests need no NOSCRIPT retry."""
        for script in self.scripts.all():
            await self.redis.script_load(script.script)

    async def upload(self, coupons: Sequence[CouponIn]) -> UploadResult:
        """Store new coupons in chunks, one script call each, so Redis serves others in between."""
        created = 0
        duplicates: list[str] = []
        keys = [self.keys.stats, self.keys.audit, *self.keys.all_available()]
        upload_id = uuid.uuid4().hex[:16]
        parts = max(1, math.ceil(len(coupons) / self.upload_chunk_size))
        types = " ".join(_TYPES)
        for part, start in enumerate(range(0, len(coupons), self.upload_chunk_size), 1):
            memory = await self.memory() if self.upload_memory_share < 1 else None
            stop_at = self.uploads_stop_at(memory) if memory else None
            if memory and stop_at is not None and memory.used >= stop_at:
                raise StoreFull(
                    f"Redis uses {memory.used} of its {memory.max} bytes, and uploads stop at "
                    f"{self.upload_memory_share:.0%} of it (allocations and redemptions go on); "
                    f"{created + len(duplicates)} coupons of this upload were taken before it stopped "
                    f"(sent again, they come back as duplicates)",
                    created=created,
                )
            chunk = coupons[start : start + self.upload_chunk_size]
            head: list[str | int] = [
                self.keys.coupon_prefix,
                self.audit_max_len,
                upload_id,
                f"{part}/{parts}",
                types,
            ]
            args = head + [
                f"{c.code} {c.type.value} {c.discount.kind} {c.discount.value} "
                f"{to_ms(c.expires_at)} {c.max_usages}"
                for c in chunk
            ]
            reply = await self.scripts.upload(keys=keys, args=args)
            created += int(reply[0])
            duplicates += [chunk[int(i) - 1].code for i in reply[1:]]
        return UploadResult.model_construct(created=created, duplicates=duplicates)

    async def allocate(self, user_id: str, coupon_type: CouponType) -> Allocation:
        """Reserve one usage of the first-expiring available coupon for ``user_id``.

        MEGADEAL coupons are allocated by the MEGADEAL gate instead (megadeal.py).
        """
        if coupon_type is CouponType.MEGADEAL:
            raise ValueError(
                "MEGADEAL allocations go through MegadealGate.allocate, which applies the limits"
            )
        reply = await self._hot.run(
            self.scripts.allocate,
            self._allocate_keys[coupon_type],
            [self._coupon_prefix, user_id, self._type_names[coupon_type], self._audit_cap],
        )
        raise_if_error(reply, f"no {coupon_type.value} coupon is available for this user")
        return allocation(Allocated._make(reply[1:]), user_id, coupon_type)

    async def redeem(self, code: str, user_id: str, coupon_type: CouponType | None) -> Redemption:
        """Record that ``user_id`` used the coupon ``code`` allocated to them."""
        reply = await self._hot.run(
            self.scripts.redeem,
            [self.keys.coupon(code), *self._stats_audit],
            [user_id, self._type_names[coupon_type] if coupon_type else b"", code, self._audit_cap],
        )
        raise_if_error(reply, _REDEEM_DETAIL.get(reply[0], "").format(code=code))
        redeemed = Redeemed._make(reply[1:])
        return Redemption(
            code=code,
            type=CouponType(redeemed.type),
            user_id=user_id,
            redeemed_at=from_ms(redeemed.redeemed_ms),
            used=int(redeemed.used),
            max_usages=int(redeemed.max_usages),
        )

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
        keys = [self.keys.stats, *self.keys.all_available()]
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
        keys = [self.keys.stats, self.keys.audit, self.keys.exhausted, *self.keys.all_available()]
        args: list[str | int] = [self.keys.coupon_prefix, self.purge_batch_size, self.audit_max_len, *_TYPES]
        while True:
            reply = pairs(await self.scripts.purge(keys=keys, args=args))
            for t in CouponType:
                purged[t] += int(reply[f"purged:{t.value}"])
                retired[t] += int(reply[f"retired:{t.value}"])
            if int(reply["examined"]) < self.purge_batch_size:
                return PurgeResult.model_construct(purged=purged, retired=retired)

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
_COUNT_FIELDS = frozenset({"created", "duplicates", "used"})
_REDEEM_DETAIL = {
    "coupon_not_found": "there is no coupon {code!r}",
    "type_mismatch": "coupon {code!r} is of another type",
    "not_allocated": "coupon {code!r} is not allocated to this user",
    "already_redeemed": "this user already redeemed coupon {code!r}",
    "coupon_expired": "coupon {code!r} has expired",
}


def _audit_entry(entry_id: str, fields: dict[str, str]) -> AuditEntry:
    """An AuditEntry from a stream entry; counts become integers."""
    values: dict[str, Any] = {
        k: int(v) if k in _COUNT_FIELDS or k.startswith(("purged_", "retired_")) else v
        for k, v in fields.items()
    }
    return AuditEntry.model_construct(id=entry_id, time=from_ms(entry_id.partition("-")[0]), **values)
