"""A caller's budget of failed coupon lookups (lua/failed_lookup.lua), so codes cannot be
enumerated: a token bucket per caller in Redis, shared by every app process."""

from __future__ import annotations

from .context import Context
from .functions import FAILED_LOOKUP


class FailedLookups:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.rate = ctx.options.failed_lookups_per_s
        self.burst = ctx.options.failed_lookup_burst

    async def spend(self, scope: str) -> int | None:
        """Take a token of caller ``scope``'s budget for a lookup that failed: None, or when
        none is left, the milliseconds until one is."""
        return await self._call(scope, spend=1)

    async def left(self, scope: str) -> int | None:
        """None while caller ``scope`` has a token left; else the milliseconds until it has."""
        return await self._call(scope, spend=0)

    async def _call(self, scope: str, spend: int) -> int | None:
        keys, args = FAILED_LOOKUP.bind(
            bucket=self.ctx.keys.failed_lookups(scope), rate=self.rate, burst=self.burst, spend=spend
        )
        reply = await self.ctx.library.run(FAILED_LOOKUP, keys, args)
        return None if reply[0] == "ok" else int(reply[1])
