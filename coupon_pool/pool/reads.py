"""Reads: a user's coupons, one coupon with its holders, the counters, and the audit trail;
each merged over the pool's slots."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from .. import cursor
from ..errors import CouponNotFound
from ..models import MAX_LISTED_HOLDERS, CouponType
from ..results import (
    AuditPage,
    Coupon,
    Holder,
    Stats,
    TypeStats,
    UserCoupon,
    UserCouponsPage,
    UserCouponStatus,
)
from .codec import audit_entry, discount, from_ms, holder_state, holder_status, metadata, pairs, to_ms
from .context import TYPES, Context
from .functions import STATS, USER_COUPONS
from .keys import CouponField, Keys
from .placement import Placement

_COUPON_FIELDS = [
    CouponField.TYPE, CouponField.DISCOUNT_KIND, CouponField.DISCOUNT_VALUE, CouponField.EXPIRES,
    CouponField.MAX_USAGES, CouponField.ALLOCATED, CouponField.USED, CouponField.CREATED,
    CouponField.STARTS, CouponField.METADATA, CouponField.BATCH, CouponField.DISABLED,
]  # fmt: skip


class Reads:
    def __init__(self, ctx: Context, placement: Placement) -> None:
        self.ctx = ctx
        self.redis = ctx.redis
        self.layout = ctx.layout
        self.placement = placement

    async def user_coupons(self, user_id: str, limit: int, after: str | None) -> UserCouponsPage:
        """A page of the coupons ``user_id`` holds, newest allocation first (every slot's, merged)."""
        after_ms, _, after_code = after.partition(".") if after else ("", "", "")
        replies = []
        for k in self.layout.slots:
            keys, args = USER_COUPONS.bind(
                listings=[k.user_coupons(t, user_id) for t in CouponType]
                + [k.lapsed(t, user_id) for t in CouponType],
                prefix=k.coupon_prefix,
                user=user_id,
                limit=limit,
                after_ms=after_ms,
                after_code=after_code,
            )
            replies.append(await self.ctx.library.run(USER_COUPONS, keys, args))
        found = [tuple(reply[i : i + 8]) for reply in replies for i in range(2, len(reply), 8)]
        # The functions' order: newest first, then the greater code first.
        found.sort(key=lambda e: (int(e[1]), e[0]), reverse=True)
        # A slot with more entries than it read names the last one it met (listed or purged):
        # past the first such entry that slot's entries are unread, so the page ends there,
        # short or even empty when the purge had deleted what it met (only a null `next` ends
        # a listing).
        horizon = max(((int(reply[0]), reply[1]) for reply in replies if reply[0]), default=None)
        if horizon is not None:
            found = [e for e in found if (int(e[1]), e[0]) >= horizon]
        following = None
        if len(found) > limit:
            last = found[limit - 1]
            following = f"{int(last[1])}.{last[0]}"
        elif horizon is not None:
            following = f"{horizon[0]}.{horizon[1]}"
        now_ms = to_ms(datetime.now(UTC))
        listed = []
        for code, allocated_ms, ctype, kind, value, expires_ms, state, meta in found[:limit]:
            _, mark, at_ms = holder_state(state)
            status: UserCouponStatus = holder_status(mark, at_ms, now_ms)
            if status in ("allocated", "held") and int(expires_ms) <= now_ms:
                status = "expired"
            expires_at = from_ms(expires_ms)
            hold_ends = from_ms(at_ms) if mark in ("h", "x") else None
            listed.append(
                UserCoupon.model_construct(
                    code=code,
                    type=CouponType(ctype),
                    discount=discount(kind, value),
                    expires_at=expires_at,
                    allocated_at=from_ms(allocated_ms),
                    redeemed_at=from_ms(at_ms) if mark == ":" else None,
                    hold_expires_at=hold_ends,
                    status=status,
                    metadata=metadata(meta),
                )
            )
        return UserCouponsPage.model_construct(coupons=listed, next=following)

    async def get_coupon(self, code: str) -> Coupon:
        """A coupon with its counts and who holds it."""
        for k in self.placement.slots_of(code, None):
            key = k.coupon(code)
            fields: list[Any] = await self.redis.hmget(key, _COUPON_FIELDS)
            if fields[0] is not None:
                break
        else:
            raise CouponNotFound(f"there is no coupon {code!r}")
        c = dict(zip(_COUPON_FIELDS, fields, strict=True))
        batch = c[CouponField.BATCH]
        rules: Any = await self.redis.hget(k.rules, batch) if batch else None
        holders = []
        prefix = CouponField.HOLDER.value
        now = datetime.now(UTC)
        now_ms = to_ms(now)
        async for field, state in self.redis.hscan_iter(key, match=f"{prefix}*", count=MAX_LISTED_HOLDERS):
            allocated_ms, mark, at_ms = holder_state(state)
            holders.append(
                Holder.model_construct(
                    user_id=field[len(prefix) :],
                    allocated_at=from_ms(allocated_ms),
                    redeemed_at=from_ms(at_ms) if mark == ":" else None,
                    status=holder_status(mark, at_ms, now_ms),
                    hold_expires_at=from_ms(at_ms) if mark in ("h", "x") else None,
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
            starts_at=from_ms(starts) if (starts := c[CouponField.STARTS]) else None,
            scheduled=bool(starts) and from_ms(starts) > now,
            metadata=metadata(c[CouponField.METADATA]),
            batch=batch,
            disabled=c[CouponField.DISABLED] is not None or (rules is not None and rules.startswith("d")),
            allocations=sorted(holders, key=lambda h: h.allocated_at),
        )

    async def stats(self) -> Stats:
        """The counters of every slot, summed (each slot's read in one function call)."""
        counters: dict[str, int] = {}
        for k in self.layout.slots:
            keys, args = STATS.bind(
                stats=k.stats,
                available_prefix=k.available_prefix,
                draining_prefix=k.draining_prefix,
                slot=k.slot,
                audit_cap=self.ctx.audit_cap.value,
                types=TYPES,
            )
            for name, value in pairs(await self.ctx.library.run(STATS, keys, args)).items():
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

    async def audit(self, limit: int, after: str | None) -> AuditPage:
        """Audit entries after ``after``, or the last ``limit`` ones; oldest first.

        A sharded pool has a stream per slot: their entries are merged by id, then by slot,
        and each id gets the slot's index as a third part (``<ms>-<seq>-<slot>``). Its pages
        follow on through a cursor (coupon_pool/cursor.py) holding each stream's own position,
        as the streams are read one by one while writes go on. ``after`` is a ``next`` or an
        entry id of this pool's form (models.AuditQuery checks one a request sends).
        """
        if not self.layout.sharded:
            raw = await self._audit_of(self.layout.main, limit, after)
            entries = [audit_entry(i, fields) for i, fields in raw]
            return AuditPage.model_construct(entries=entries, next=entries[-1].id if entries else after)
        if after is None:
            pages = [await self._audit_of(k, limit, None) for k in self.layout.slots]
            # Each stream's position is the newest entry read of it: the page holds it, or it
            # is older than every entry the page holds.
            positions = [_position(page[-1][0]) if page else (0, 0) for page in pages]
        else:
            if after.startswith(cursor.PREFIX):
                positions = cursor.decode(after)
            else:
                positions = cursor.from_entry_id(after, len(self.layout.slots))
            pages = [
                await self._audit_of(k, limit, cursor.stream_id(positions[n]))
                for n, k in enumerate(self.layout.slots)
            ]
        merged = sorted(
            ((_position(i), n, i, fields) for n, page in enumerate(pages) for i, fields in page),
            key=lambda e: (e[0], e[1]),
        )
        merged = merged[-limit:] if after is None else merged[:limit]
        if not merged:
            return AuditPage.model_construct(entries=[], next=after)
        for at, n, _, _ in merged:
            positions[n] = max(positions[n], at)
        entries = [audit_entry(f"{i}-{n}", fields, i) for _, n, i, fields in merged]
        return AuditPage.model_construct(entries=entries, next=cursor.encode(positions))

    async def _audit_of(self, k: Keys, limit: int, after: str | None) -> list[tuple[str, dict[str, str]]]:
        if after is None:
            latest = cast(
                list[tuple[str, dict[str, str]]], await self.redis.xrevrange(k.audit, count=limit) or []
            )
            return list(reversed(latest))
        return cast(
            list[tuple[str, dict[str, str]]],
            await self.redis.xrange(k.audit, min=f"({after}", count=limit) or [],
        )


def _position(entry_id: str) -> cursor.Position:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
