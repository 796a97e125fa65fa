"""Request and response bodies of the v1 API, with every validation rule on input."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

MAX_UPLOAD = 50_000
MAX_LISTED_HOLDERS = 1000
MAX_AUDIT_PAGE = 1000
AUDIT_ID_PATTERN = r"^[0-9]{1,20}(-[0-9]{1,20})?$"
CODE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
USER_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"  # visible ASCII: no spaces, controls or non-ASCII
_FLAT = re.compile(r"(0|[1-9][0-9]{0,11})(\.[0-9]{1,4})?")
_PERCENT = re.compile(r"(0|[1-9][0-9]{0,2})(\.[0-9]{1,2})?")


class CouponType(StrEnum):
    FREE = "FREE"
    STANDARD = "STANDARD"
    MEGADEAL = "MEGADEAL"


Code = Annotated[str, StringConstraints(pattern=CODE_PATTERN)]
UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)]


def _exact_number(value: Any) -> str:
    """The text of a JSON string or integer; floats are refused, as they cannot hold amounts exactly."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return str(value)
    if kind is float:
        raise PydanticCustomError(
            "decimal_as_string",
            'send this amount as a decimal string such as "12.50": a JSON float is not exact',
        )
    raise PydanticCustomError("decimal_type", "must be a decimal string or an integer")


def _flat_amount(value: Any) -> str:
    text = _exact_number(value)
    if not _FLAT.fullmatch(text) or Decimal(text) <= 0:
        raise PydanticCustomError(
            "flat_amount", "must be greater than 0, with at most 12 digits before the point and 4 after"
        )
    return text


def _percent(value: Any) -> int | str:
    text = _exact_number(value)
    if not _PERCENT.fullmatch(text) or not 0 < Decimal(text) <= 100:
        raise PydanticCustomError(
            "percent", "must be greater than 0 and at most 100, with at most 2 decimals"
        )
    return int(text) if text.isdigit() else text


def _in_future(value: datetime) -> datetime:
    if value.timestamp() <= time.time():
        raise PydanticCustomError("expired", "must be in the future")
    return value


FlatAmount = Annotated[
    str,
    BeforeValidator(_flat_amount),
    WithJsonSchema(
        {"type": "string", "pattern": r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,4})?$", "examples": ["12.50"]}
    ),
]
Percent = Annotated[
    int | str,
    BeforeValidator(_percent),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": 100},
                {"type": "string", "pattern": r"^[0-9]{1,3}(\.[0-9]{1,2})?$"},
            ]
        }
    ),
]
FutureTime = Annotated[AwareDatetime, AfterValidator(_in_future)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FlatDiscount(_Body):
    kind: Literal["flat"]
    value: FlatAmount


class PercentDiscount(_Body):
    kind: Literal["percent"]
    value: Percent


Discount = Annotated[FlatDiscount | PercentDiscount, Field(discriminator="kind")]


class CouponIn(_Body):
    code: Code
    type: CouponType = CouponType.STANDARD
    discount: Discount
    expires_at: FutureTime
    max_usages: int = Field(default=1, ge=1, le=1_000_000)


class UploadRequest(_Body):
    coupons: list[CouponIn] = Field(max_length=MAX_UPLOAD)


class AllocationRequest(_Body):
    user_id: UserId
    type: CouponType = CouponType.STANDARD


class RedemptionRequest(_Body):
    code: Code
    user_id: UserId
    type: CouponType | None = None


class UploadResult(_Body):
    created: int
    duplicates: list[str] = Field(description="codes not stored because they already existed")


class Holder(_Body):
    user_id: str
    allocated_at: datetime
    redeemed_at: datetime | None


class Coupon(_Body):
    code: str
    type: CouponType
    discount: Discount
    expires_at: datetime
    max_usages: int
    allocated: int
    used: int
    created_at: datetime
    allocations: list[Holder] = Field(
        description=f"who holds it, oldest allocation first; at most {MAX_LISTED_HOLDERS} listed"
    )


# The answers of the hot paths are plain dataclasses, which orjson writes directly: a
# pydantic model costs several microseconds more to build and serialize per request (and
# a frozen dataclass one more: its __init__ goes through object.__setattr__).
@dataclass(slots=True)
class Allocation:
    code: str
    type: CouponType
    discount: Discount
    expires_at: datetime
    user_id: str
    allocated_at: datetime


@dataclass(slots=True)
class Redemption:
    code: str
    type: CouponType
    user_id: str
    redeemed_at: datetime
    used: int
    max_usages: int


class TypeStats(_Body):
    created: int
    allocated: int
    used: int
    purged: int = Field(description="expired coupons deleted unused by the purge")
    available: int = Field(description="unexpired coupons with at least one free usage")


class Stats(_Body):
    types: dict[CouponType, TypeStats]
    totals: TypeStats


class PurgeResult(_Body):
    purged: dict[CouponType, int] = Field(description="expired, never redeemed: deleted")
    retired: dict[CouponType, int] = Field(
        description="expired, redeemed at least once: out of the pool, record kept"
    )


class AuditEntry(_Body):
    """One entry of the audit stream; fields beyond these depend on ``op``."""

    model_config = ConfigDict(extra="allow")
    id: str
    time: datetime
    op: str


def _stream_id(value: str) -> str:
    if any(int(part) >= 2**64 for part in value.split("-")):
        raise PydanticCustomError("stream_id", "each part of an entry id must be below 2^64")
    return value


StreamId = Annotated[str, StringConstraints(pattern=AUDIT_ID_PATTERN), AfterValidator(_stream_id)]


class AuditQuery(_Body):
    """The query of GET /v1/audit (query values are text, so not strict)."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)
    limit: int = Field(default=100, ge=1, le=MAX_AUDIT_PAGE, description="most entries to return")
    after: StreamId | None = Field(
        default=None, description="an entry id: only entries after it (else the latest `limit` entries)"
    )


class AuditPage(_Body):
    entries: list[AuditEntry] = Field(description="oldest first")
    next: str | None = Field(description="pass as `after` for the entries that follow")


class FieldError(_Body):
    index: int | None = Field(default=None, description="position of the coupon in an upload")
    field: str
    message: str


class Problem(_Body):
    """An RFC 9457 problem document; ``code`` is the stable machine-readable error."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] | None = None
    error_count: int | None = None
