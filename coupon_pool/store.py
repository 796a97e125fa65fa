"""The coupon store: Python calls to the Lua scripts in lua/, and their results decoded."""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from redis.asyncio import Redis

from .autopipeline import AutoPipeline
from .errors import BY_SCRIPT_REPLY, CouponError, CouponNotFound
from .keys import Keys
from .megadeal import MegadealGate, MegadealLimits
from .models import (
    MAX_LISTED_HOLDERS,
    Allocation,
    AuditEntry,
    AuditPage,
    Coupon,
    CouponIn,
    CouponType,
    FlatDiscount,
    Holder,
    PercentDiscount,
    PurgeResult,
    Redemption,
    Stats,
    TypeStats,
    UploadResult,
)
from .scripts import register

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_SCRIPTS = ("upload", "allocate", "redeem", "stats", "purge")


def to_ms(moment: datetime) -> int:
    return (moment - EPOCH) // _MS


def from_ms(ms: int | str) -> datetime:
    return EPOCH + timedelta(milliseconds=int(ms))


@functools.lru_cache(maxsize=4096)  # discounts are immutable, and most pools have few distinct ones
def discount(kind: str, value: str) -> FlatDiscount | PercentDiscount:
    if kind == "flat":
        return FlatDiscount.model_construct(kind="flat", value=value)
    return PercentDiscount.model_construct(kind="percent", value=int(value) if value.isdigit() else value)


class Store:
    """All coupon state lives in Redis; every change is one atomic script call."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        upload_chunk_size: int = 1000,
        purge_batch_size: int = 1000,
        audit_max_len: int = 100_000,
        megadeal: MegadealLimits | None = None,
        blocking_redis: Redis | None = None,
    ) -> None:
        """``blocking_redis`` serves the MEGADEAL waits (BLPOP); give it its own pool in a server."""
        self.redis = redis
        self.keys = keys
        self.upload_chunk_size = upload_chunk_size
        self.purge_batch_size = purge_batch_size
        self.audit_max_len = audit_max_len
        self.megadeal = MegadealGate(
            redis, blocking_redis or redis, keys, megadeal or MegadealLimits(), audit_max_len
        )
        self._scripts = {name: register(redis, name) for name in _SCRIPTS}
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

    async def load_scripts(self) -> None:
        """Load every script into Redis now, so the first requests need no NOSCRIPT retry."""
        for script in (*self._scripts.values(), *self.megadeal.scripts):
            await self.redis.script_load(script.script)

    async def _run(self, name: str, keys: Sequence[str | bytes], args: Sequence[Any]) -> Any:
        return await self._scripts[name](keys=keys, args=args)

    async def upload(self, coupons: Sequence[CouponIn]) -> UploadResult:
        """Store new coupons in chunks, one script call each, so Redis serves others in between."""
        created = 0
        duplicates: list[str] = []
        keys = [self.keys.stats, *self.keys.all_available(), self.keys.audit]
        upload_id = uuid.uuid4().hex[:16]
        parts = max(1, math.ceil(len(coupons) / self.upload_chunk_size))
        for part, start in enumerate(range(0, len(coupons), self.upload_chunk_size), 1):
            chunk = coupons[start : start + self.upload_chunk_size]
            head = [self.keys.coupon_prefix, self.audit_max_len, upload_id, f"{part}/{parts}"]
            args = head + [
                f"{c.code} {c.type.value} {c.discount.kind} {c.discount.value} "
                f"{to_ms(c.expires_at)} {c.max_usages}"
                for c in chunk
            ]
            reply = await self._run("upload", keys, args)
            created += int(reply[0])
            duplicates += [chunk[int(i) - 1].code for i in reply[1:]]
        return UploadResult.model_construct(created=created, duplicates=duplicates)

    async def allocate(self, user_id: str, coupon_type: CouponType) -> Allocation:
        """Reserve one usage of the first-expiring available coupon for ``user_id``.

        MEGADEAL allocations pass the MEGADEAL gate first (and may wait for it).
        """
        if coupon_type is CouponType.MEGADEAL:
            async with self.megadeal.slot(user_id) as allocated:
                return _allocation(allocated, user_id, coupon_type)
        reply = await self._hot.run(
            self._scripts["allocate"],
            self._allocate_keys[coupon_type],
            [self._coupon_prefix, user_id, self._type_names[coupon_type], self._audit_cap],
        )
        _raise_if_error(reply, f"no {coupon_type.value} coupon is available for this user")
        return _allocation(reply[1:], user_id, coupon_type)

    async def redeem(self, code: str, user_id: str, coupon_type: CouponType | None) -> Redemption:
        """Record that ``user_id`` used the coupon ``code`` allocated to them."""
        reply = await self._hot.run(
            self._scripts["redeem"],
            [self.keys.coupon(code), *self._stats_audit],
            [user_id, self._type_names[coupon_type] if coupon_type else b"", code, self._audit_cap],
        )
        _raise_if_error(reply, _REDEEM_DETAIL.get(reply[0], "").format(code=code))
        _, ctype, used, max_usages, redeemed = reply
        return Redemption(
            code=code,
            type=CouponType(ctype),
            user_id=user_id,
            redeemed_at=from_ms(redeemed),
            used=int(used),
            max_usages=int(max_usages),
        )

    async def get_coupon(self, code: str) -> Coupon:
        """A coupon with its counts and who holds it."""
        key = self.keys.coupon(code)
        fields: list[Any] = await self.redis.hmget(
            key, ["type", "dk", "dv", "exp", "max", "alloc", "used", "ct"]
        )
        if fields[0] is None:
            raise CouponNotFound(f"there is no coupon {code!r}")
        ctype, kind, value, expires, max_usages, allocated, used, created = fields
        holders = []
        async for field, state in self.redis.hscan_iter(key, match="u:*", count=MAX_LISTED_HOLDERS):
            allocated_ms, _, redeemed_ms = state.partition(":")
            holders.append(
                Holder.model_construct(
                    user_id=field[2:],
                    allocated_at=from_ms(allocated_ms),
                    redeemed_at=from_ms(redeemed_ms) if redeemed_ms else None,
                )
            )
            if len(holders) == MAX_LISTED_HOLDERS:
                break
        return Coupon.model_construct(
            code=code,
            type=CouponType(ctype),
            discount=discount(kind, value),
            expires_at=from_ms(expires),
            max_usages=int(max_usages),
            allocated=int(allocated),
            used=int(used),
            created_at=from_ms(created),
            allocations=sorted(holders, key=lambda h: h.allocated_at),
        )

    async def stats(self) -> Stats:
        reply = await self._run("stats", [self.keys.stats, *self.keys.all_available()], [])
        counters = dict(zip(reply[3::2], reply[4::2], strict=True))
        types = {
            t: TypeStats.model_construct(
                created=int(counters.get(f"{t.value}:created", 0)),
                allocated=int(counters.get(f"{t.value}:allocated", 0)),
                used=int(counters.get(f"{t.value}:used", 0)),
                purged=int(counters.get(f"{t.value}:purged", 0)),
                available=int(reply[i]),
            )
            for i, t in enumerate(CouponType)
        }
        totals = TypeStats.model_construct(
            **{f: sum(getattr(s, f) for s in types.values()) for f in TypeStats.model_fields}
        )
        return Stats.model_construct(types=types, totals=totals)

    async def purge(self) -> PurgeResult:
        """Remove expired coupons, a batch per script call, until none is left."""
        purged = dict.fromkeys(CouponType, 0)
        retired = dict.fromkeys(CouponType, 0)
        keys = [*self.keys.all_available(), self.keys.exhausted, self.keys.stats, self.keys.audit]
        args = [self.keys.coupon_prefix, self.purge_batch_size, self.audit_max_len]
        while True:
            reply = await self._run("purge", keys, args)
            for i, t in enumerate(CouponType):
                purged[t] += int(reply[1 + i])
                retired[t] += int(reply[4 + i])
            if int(reply[0]) < self.purge_batch_size:
                return PurgeResult.model_construct(purged=purged, retired=retired)

    async def try_purge_lock(self, seconds: float) -> bool:
        """Claim the purge for the next ``seconds``: True for one caller across all processes."""
        return bool(await self.redis.set(self.keys.purge_lock, "1", nx=True, px=max(1, int(seconds * 1000))))

    async def audit(self, limit: int, after: str | None) -> AuditPage:
        """Audit entries after the id ``after``, or the last ``limit`` ones; oldest first."""
        if after is None:
            raw = list(reversed(await self.redis.xrevrange(self.keys.audit, count=limit) or []))
        else:
            raw = await self.redis.xrange(self.keys.audit, min=f"({after}", count=limit) or []
        entries = [_audit_entry(cast(str, id_), cast(dict[str, str], fields)) for id_, fields in raw]
        return AuditPage.model_construct(entries=entries, next=entries[-1].id if entries else after)

    async def ping(self) -> None:
        await self.redis.ping()


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


def _allocation(fields: Sequence[Any], user_id: str, coupon_type: CouponType) -> Allocation:
    """An Allocation from a script's {code, kind, value, expires_at ms, allocated_at ms}."""
    code, kind, value, expires, allocated = fields
    return Allocation(
        code=code,
        type=coupon_type,
        discount=discount(kind, value),
        expires_at=from_ms(expires),
        user_id=user_id,
        allocated_at=from_ms(allocated),
    )


def _raise_if_error(reply: list[Any], detail: str) -> None:
    status = reply[0]
    if status != "ok":
        error: type[CouponError] = BY_SCRIPT_REPLY[status]
        raise error(detail)
