"""Exports: a batch's coupons, read slot by slot (the main slot first, then each shard), a
bounded stretch of the slot's list of the batch's codes per export_page.lua call, so an
export of any size never holds Redis for long, nor more than a stretch in memory.

An export is no snapshot: each stretch is read as it is when its call runs. A code listed
in a slot but purged, or purged and stored again in another batch, is left out by the
script.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from ..errors import BatchNotFound
from ..models import CouponType
from ..results import ExportedCoupon
from .codec import discount, from_ms
from .context import Context
from .functions import EXPORT_PAGE
from .keys import Keys

EXPORT_STRETCH = 250  # codes an export_page.lua call looks at: about 1 ms of Redis (docs/benchmarks.md)
_VALUES = 12  # per coupon in export_page.lua's reply


class Exporting:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.run = ctx.library.run

    async def export(self, batch: str, *, expired: bool = False) -> AsyncIterator[list[ExportedCoupon]]:
        """The batch's coupons, a stretch at a time (each a list, never empty), in each slot in
        upload order; those past their expiry only when ``expired``. BatchNotFound at once
        (before any stretch) when the batch has no record."""
        created, off = await self.ctx.redis.hmget(self.ctx.keys.batch(batch), ["created_at", "disabled"])
        if created is None:
            raise BatchNotFound(f"there is no batch {batch!r}")
        return self._walk(batch, batch_off=off in ("1", b"1"), expired=expired)

    async def _walk(
        self, batch: str, *, batch_off: bool, expired: bool
    ) -> AsyncIterator[list[ExportedCoupon]]:
        for k in self.ctx.layout.slots:
            start = 0
            while start >= 0:
                start, rows = await self.stretch(k, batch, start, batch_off)
                if not expired:
                    now = time.time()
                    rows = [row for row in rows if row.expires_at.timestamp() > now]
                if rows:
                    yield rows

    async def stretch(
        self, k: Keys, batch: str, start: int, batch_off: bool
    ) -> tuple[int, list[ExportedCoupon]]:
        """The batch's coupons among the codes of slot ``k``'s list from ``start`` on
        (EXPORT_STRETCH of them), and where the next stretch starts (-1: the list is done)."""
        keys, args = EXPORT_PAGE.bind(
            codes=k.batch_codes(batch), batch=batch, slot=k.slot, start=start, count=EXPORT_STRETCH
        )
        reply: list[Any] = await self.run(EXPORT_PAGE, keys, args, idempotent=True)
        rows = [_row(reply[i : i + _VALUES], batch_off) for i in range(1, len(reply), _VALUES)]
        return int(reply[0]), rows


def _row(values: list[Any], batch_off: bool) -> ExportedCoupon:
    """One coupon of export_page.lua's reply, by name."""
    code, ctype, kind, value, expires, max_usages, allocated, used, starts, metadata, off, created = values
    return ExportedCoupon(
        code=code,
        type=CouponType(ctype),
        discount=discount(kind, value),
        expires_at=from_ms(expires),
        max_usages=int(max_usages),
        starts_at=from_ms(starts) if starts else None,
        metadata_json=metadata or "{}",
        allocated=int(allocated),
        used=int(used),
        disabled=batch_off or off == "1",
        created_at=from_ms(created),
    )
