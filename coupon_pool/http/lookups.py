"""Coupon lookups within each caller's budget of failures, so codes cannot be enumerated.

An operation that looks a coupon up by code declares how (``Operation(lookup=...)``); its
failures take a token of the caller's budget (pool/budgets.py, a token bucket in Redis)
after the lookup, so a success is never refused or slowed.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from enum import Enum
from typing import TYPE_CHECKING, Any

from .. import errors
from ..errors import CouponError
from ..pool import keyed

if TYPE_CHECKING:
    from .inputs import Call, Handler, Services


class Lookup(Enum):
    """How an operation that looks a coupon up by code guards against enumeration (a budget
    of failed lookups per caller, pool/budgets.py)."""

    FAILURES = "failures"  # its failures spend the budget; past it they answer 429
    EVERY = "every"  # likewise, and past it every answer is 429: its success shows the code exists


# The refusals that tell something of a code the caller does not hold.
LOOKUP_FAILURES = frozenset(
    [
        "coupon_not_found",
        "not_allocated",
        "type_mismatch",
        "already_redeemed",
        "not_redeemed",
        "coupon_expired",
        "hold_expired",
        "coupon_not_yet_valid",
    ]
)


def budgeted(handler: Handler, lookup: Lookup, services: Services) -> Handler:
    """``handler`` within its caller's budget of failed lookups (see Lookup)."""

    async def run(call: Call, **inputs: Any) -> Any:
        scope = call.request.scope.get(keyed.KEY_ID, keyed.OPEN_SCOPE)
        budget = services.store.failed_lookups
        if lookup is Lookup.EVERY:  # the budget read beside the lookup: no time added
            left, outcome = await asyncio.gather(budget.left(scope), _settled(handler(call, **inputs)))
            if left is not None:
                raise _refused(call, left)
        else:
            outcome = await _settled(handler(call, **inputs))
        if isinstance(outcome, CouponError) and outcome.code in LOOKUP_FAILURES:
            await spend_lookup(call, services)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return run


async def spend_lookup(call: Call, services: Services | None = None) -> None:
    """A failed lookup of the caller's: a token of their budget, or 429 past it."""
    scope = call.request.scope.get(keyed.KEY_ID, keyed.OPEN_SCOPE)
    budget = (services or call).store.failed_lookups
    wait_ms = await budget.spend(scope)
    if wait_ms is not None:
        raise _refused(call, wait_ms) from None


async def _settled(work: Awaitable[Any]) -> Any:
    """What ``work`` returned, or the CouponError it raised (others propagate)."""
    try:
        return await work
    except CouponError as error:
        return error


def _refused(call: Call, wait_ms: int) -> errors.TooManyFailedLookups:
    call.request.app.state.metrics.lookups_refused.inc()
    return errors.TooManyFailedLookups(
        "this caller's lookups of codes that do not exist or are not the user's are over their "
        "budget (FAILED_LOOKUPS_PER_S, FAILED_LOOKUP_BURST); send it again later",
        headers={"Retry-After": str(max(1, math.ceil(wait_ms / 1000)))},
    )
