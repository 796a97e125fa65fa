"""Pool-low events: per type, a threshold of available coupons (a count, or minutes of supply
at the type's allocation rate), and one audit entry each time a type crosses it.

A check reads the counters as GET /v1/stats does (every slot, summed), then calls
lua/pool_level.lua in the main slot with each type's available count and threshold; the
script keeps each type's state in ``{ns}:levels`` and appends ``pool_low`` or
``pool_recovered`` to the main slot's trail in the same call, so a crossing is recorded once
whoever checks. Each check takes a ticket first (HINCRBY), and the script ignores a check
older than the latest it applied to a type, so a slow process cannot undo a newer reading.

The allocation rate of a threshold in minutes is measured here, in the process: allocations
made (allocated + released + hold_expired, as the dashboard counts them) between the
samples of the last ``RATE_WINDOW_S``, once they span ``MIN_RATE_SPAN_S``; before that such a
threshold is not checked, and with no allocations in the window it is 0 (never low).
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from ..models import CouponType
from ..results import PoolLevels, Stats, TypeLevel, TypeStats
from .context import Context
from .functions import POOL_LEVEL
from .keys import LevelField

RATE_WINDOW_S = 300.0  # the allocation rate is measured over the last 5 minutes
MIN_RATE_SPAN_S = 10.0  # and from samples at least this far apart
_FORM = re.compile(r"([0-9]+)(m?)")


@dataclass(frozen=True)
class Threshold:
    """A type's threshold: ``value`` available coupons, or ``value`` minutes of supply."""

    value: int
    minutes: bool = False

    @classmethod
    def parse(cls, text: str) -> Threshold:
        """From a setting's text, "<n>" or "<n>m" (settings.py has checked it)."""
        found = _FORM.fullmatch(text)
        if not found:
            raise ValueError(f"a threshold is <n> or <n>m, not {text!r}")
        return cls(int(found[1]), bool(found[2]))

    def __str__(self) -> str:
        return f"{self.value}m" if self.minutes else str(self.value)


@dataclass(frozen=True)
class Crossing:
    type: CouponType
    op: str  # "pool_low" or "pool_recovered"


def made(counts: TypeStats) -> int:
    """Allocations made of a type: ``allocated`` is net of releases and lapsed holds."""
    return counts.allocated + counts.released + counts.hold_expired


class Levels:
    def __init__(self, ctx: Context, stats: Callable[[], Awaitable[Stats]]) -> None:
        self.ctx = ctx
        self.redis = ctx.redis
        self.key = ctx.layout.main.levels
        self.stats = stats
        self.samples: deque[tuple[float, dict[CouponType, int]]] = deque()  # (when, made per type)

    async def check(
        self, thresholds: Mapping[CouponType, Threshold], now: float | None = None
    ) -> list[Crossing]:
        """Check the types of ``thresholds`` now (``now``: time.monotonic(), given by tests);
        the crossings this call recorded."""
        if not thresholds:
            return []
        ticket = await self.redis.hincrby(self.key, LevelField.TICKET, 1)
        stats = await self.stats()
        self._sample(stats, time.monotonic() if now is None else now)
        checks: list[Any] = []
        for ctype, threshold in thresholds.items():
            available = stats.types[ctype].available
            if not threshold.minutes:
                checks += [ctype.value, available, threshold.value, "", ""]
                continue
            rate = self.rate(ctype)
            if rate is not None:
                limit = math.ceil(rate * threshold.value)
                checks += [ctype.value, available, limit, threshold.value, f"{rate:.2f}"]
        if not checks:
            return []
        keys, args = POOL_LEVEL.bind(
            levels=self.key,
            audit_stream=self.ctx.layout.main.audit,
            audit_cap=self.ctx.audit_cap.value,
            ticket=ticket,
            checks=checks,
        )
        reply = await self.ctx.library.run(POOL_LEVEL, keys, args)
        return [Crossing(CouponType(reply[i]), reply[i + 1]) for i in range(0, len(reply), 2)]

    def rate(self, ctype: CouponType) -> float | None:
        """Allocations of ``ctype`` per minute over the samples kept; None until they span
        MIN_RATE_SPAN_S."""
        (first, older), (last, newer) = self.samples[0], self.samples[-1]
        if last - first < MIN_RATE_SPAN_S:
            return None
        return max(0, newer[ctype] - older[ctype]) * 60 / (last - first)

    def _sample(self, stats: Stats, now: float) -> None:
        self.samples.append((now, {t: made(counts) for t, counts in stats.types.items()}))
        while now - self.samples[0][0] > RATE_WINDOW_S:
            self.samples.popleft()

    async def levels(self) -> PoolLevels:
        """Every type's state as the latest check recorded it (never checked: not low)."""
        found = cast(dict[str, str], await self.redis.hgetall(self.key))

        def number(field: LevelField, ctype: CouponType) -> int | None:
            value = found.get(f"{field}{ctype.value}")
            return None if value is None else int(value)

        types = {
            t: TypeLevel.model_construct(
                low=found.get(f"{LevelField.STATE}{t.value}") == "low",
                available=number(LevelField.AVAILABLE, t),
                threshold=number(LevelField.THRESHOLD, t),
            )
            for t in CouponType
        }
        return PoolLevels.model_construct(types=types)

    async def low(self) -> list[CouponType]:
        """The types low now, as the latest checks recorded them."""
        return [t for t, level in (await self.levels()).types.items() if level.low]


def thresholds_of(given: Mapping[str, str]) -> dict[CouponType, Threshold]:
    """Thresholds by type from settings.Settings.pool_low (type name -> "<n>" or "<n>m")."""
    return {CouponType(name): Threshold.parse(text) for name, text in given.items()}
