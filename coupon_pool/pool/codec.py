"""Replies to Python: the functions' answers decoded by name, times and discounts converted,
and a function's error reply raised as the CouponError of its code."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from ..errors import BY_CODE
from ..models import CouponIn, CouponType, FlatDiscount, PercentDiscount, percent_value
from ..results import Allocation, AuditEntry, HolderStatus, UploadResult, ValidatedCoupon, Validation

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(moment: datetime) -> int:
    return (moment - EPOCH) // _MS


@functools.lru_cache(maxsize=4096)  # a coupon's expiry recurs, and so does a busy millisecond
def from_ms(ms: int | str) -> datetime:
    seconds, millis = divmod(int(ms), 1000)
    return EPOCH + timedelta(0, seconds, millis * 1000)  # positional: a third faster than milliseconds=


@functools.lru_cache(maxsize=4096)  # discounts are immutable, and most pools have few distinct ones
def discount(kind: str, value: str) -> FlatDiscount | PercentDiscount:
    if kind == "flat":
        return FlatDiscount.model_construct(kind="flat", value=value)
    return PercentDiscount.model_construct(kind="percent", value=percent_value(value))


# The replies, by name. A function answers an array: a status word ("ok" or an error
# code), then the fields below, in this order (each file's header says the same).


class Allocated(NamedTuple):
    """allocate.lua's, and megadeal_enter.lua's once admitted: the coupon handed out."""

    code: str
    discount_kind: str
    discount_value: str
    expires_ms: str
    allocated_ms: int
    hold_ms: str  # the hold's deadline, or "" for an allocation for good
    metadata: str  # the coupon's metadata as JSON, or ""


class Redeemed(NamedTuple):
    type: str
    used: int
    max_usages: str
    redeemed_ms: int


class Changed(NamedTuple):
    """release.lua's (total: usages allocated now) and rollback.lua's (total: used now)."""

    type: str
    total: int
    max_usages: str
    at_ms: int


class Waiting(NamedTuple):
    """megadeal_enter.lua's "wait": come back after ``wait_ms`` at the latest."""

    wait_ms: int
    reason: str  # "rate" or "slot"
    rank: int


def pairs(reply: list[Any]) -> dict[str, Any]:
    """A flat {name, value, name, value, ...} reply (stats.lua, purge.lua) as a dict."""
    return dict(zip(reply[::2], reply[1::2], strict=True))


def allocation(reply: Allocated, user_id: str, coupon_type: CouponType) -> Allocation:
    return Allocation(
        code=reply.code,
        type=coupon_type,
        discount=discount(reply.discount_kind, reply.discount_value),
        expires_at=from_ms(reply.expires_ms),
        user_id=user_id,
        allocated_at=from_ms(reply.allocated_ms),
        hold_expires_at=from_ms(reply.hold_ms) if reply.hold_ms else None,
        metadata=metadata(reply.metadata),
    )


def metadata(text: str | None) -> dict[str, str]:
    """A coupon's metadata field (JSON, as upload stored it), or {} without one."""
    return orjson.loads(text) if text else {}


def holder_status(mark: str, time: str, now_ms: int) -> HolderStatus:
    """A holder's status from its record (holder_state's mark and time) at ``now_ms``: a hold
    past its deadline has ended, whether or not settle() has given it back yet ("x")."""
    if mark == ":":
        return "redeemed"
    if mark == "x" or (mark == "h" and int(time) <= now_ms):
        return "hold_expired"
    return "held" if mark == "h" else "allocated"


_HOLDER_STATE = re.compile(r"(\d+)(?:([:hx])(\d+)|h\d+:(\d+))?")


def holder_state(value: str) -> tuple[str, str, str]:
    """A holder field's value (keys.CouponField.HOLDER) as allocated_at ms, its mark ("": for
    good, ":" redeemed, "h" held, "x" a hold that lapsed) and the mark's time ("" without).
    "<at>h<deadline>:<at>", a hold redeemed by a version that knew no holds, is redeemed (as
    holder_state in lib.lua reads it); any other value raises ValueError."""
    found = _HOLDER_STATE.fullmatch(value)
    if found is None:
        raise ValueError(f"malformed holder record {value!r}")
    at, mark, time, redeemed = found.groups()
    if redeemed is not None:
        return at, ":", redeemed
    return at, mark or "", time or ""


def raise_if_error(reply: list[Any], details: dict[str, str], **values: Any) -> None:
    """A function's error reply ({error code}) as the CouponError of that code, its detail
    from ``details`` filled in with ``values``."""
    if reply[0] != "ok":
        raise BY_CODE[reply[0]](details.get(reply[0], "").format(**values))


def validation(reply: list[Any], code: str) -> Validation:
    """validate.lua's reply as the answer of POST /v1/validations."""
    status = reply[0]
    problem = None if status == "ok" else status
    detail = USE_DETAIL[status].format(code=code) if problem else None
    if len(reply) == 1:  # the user holds no allocation of it: nothing of the coupon is told
        return Validation.model_construct(valid=False, code=problem, detail=detail, coupon=None)
    ctype, kind, value, expires_ms, starts_ms, meta, hold_ms = reply[1:8]
    coupon = ValidatedCoupon.model_construct(
        code=code,
        type=CouponType(ctype),
        discount=discount(kind, value),
        expires_at=from_ms(expires_ms),
        starts_at=from_ms(starts_ms) if starts_ms else None,
        hold_expires_at=from_ms(hold_ms) if hold_ms else None,
        metadata=metadata(meta),
    )
    return Validation.model_construct(valid=problem is None, code=problem, detail=detail, coupon=coupon)


ALLOCATE_DETAIL = {
    "pool_empty": "no {type} coupon is available for this user",
    "user_limit_reached": "this user holds {limit} {type} coupons, the most one user may hold at once",
}
USE_DETAIL = {
    "coupon_not_found": "there is no coupon {code!r}",
    "type_mismatch": "coupon {code!r} is of another type",
    "not_allocated": "coupon {code!r} is not allocated to this user",
    "already_redeemed": "this user already redeemed coupon {code!r}",
    "not_redeemed": "this user has not redeemed coupon {code!r}",
    "coupon_expired": "coupon {code!r} has expired",
    "hold_expired": "this user's hold of coupon {code!r} has ended; the coupon went back to the pool",
    "coupon_not_yet_valid": "coupon {code!r} has not started yet",
    "coupon_disabled": "coupon {code!r} is disabled (on its own or with its batch)",
    "batch_exhausted": "the batch of coupon {code!r} has had all the redemptions its cap allows",
}


def upload_result(answer: dict[str, Any], coupons: Sequence[CouponIn]) -> UploadResult:
    """An upload's answer from its outcome (created, 1-based positions of duplicates)."""
    duplicates = [coupons[i - 1].code for i in answer["duplicates"]]
    # An answer stored before batches existed (an Idempotency-Key replayed across versions) has none.
    return UploadResult.model_construct(
        created=answer["created"], duplicates=duplicates, batch=answer.get("batch", "")
    )


_COUNT_FIELDS = frozenset({"created", "duplicates", "used", "allocated", "available", "threshold", "minutes"})
_RATE_FIELDS = frozenset({"rate_per_min"})  # pool-low events in minutes (levels.py)
_CONVERTED = _COUNT_FIELDS | _RATE_FIELDS
_COUNT_PREFIXES = ("purged_", "retired_")


def audit_entry(entry_id: str, fields: dict[str, str], stream_id: str | None = None) -> AuditEntry:
    """An AuditEntry from a stream entry; counts become integers, rates numbers."""
    values: dict[str, Any] = {k: _field(k, v) for k, v in fields.items()}
    return AuditEntry.model_construct(
        id=entry_id, time=from_ms((stream_id or entry_id).partition("-")[0]), **values
    )


def audit_json(entry_id: str, fields: dict[str, str], stream_id: str) -> dict[str, Any]:
    """``audit_entry(...).model_dump(mode="json")``, the same keys in the same order, built
    directly: a webhook sends every entry, and the model's dump cost a tenth of a worker's
    allocations under load (tests/pool/test_codec.py holds the two equal)."""
    time = _json_time(int(stream_id.partition("-")[0]))
    # The model's fields come first (op, when there is one, right after the time), then the
    # extra ones in their order; the few that are numbers are converted in place.
    body: dict[str, Any] = (
        {"id": entry_id, "time": time, "op": None, **fields}
        if "op" in fields
        else {"id": entry_id, "time": time, **fields}
    )
    for name in fields:
        if name in _CONVERTED or name.startswith(_COUNT_PREFIXES):
            body[name] = _field(name, fields[name])
    return body


def _json_time(ms: int) -> str:
    """A moment of milliseconds as pydantic writes a UTC datetime: microseconds only when not 0."""
    seconds, millis = divmod(ms, 1000)
    whole = _json_second(seconds)
    return f"{whole}.{millis:03d}000Z" if millis else f"{whole}Z"


@functools.lru_cache(maxsize=256)  # entries come in runs of the same second
def _json_second(seconds: int) -> str:
    return (EPOCH + timedelta(0, seconds)).strftime("%Y-%m-%dT%H:%M:%S")


def _field(name: str, value: str) -> Any:
    if name in _COUNT_FIELDS or name.startswith(_COUNT_PREFIXES):
        return int(value)
    return float(value) if name in _RATE_FIELDS else value
