"""Request bodies and parameters of the v1 API, with every validation rule on input.

The answers are in results.py; both share the coupon types and discounts defined here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from . import cursor

MAX_UPLOAD = 50_000
LATEST_EXPIRY = datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)
MAX_LISTED_HOLDERS = 1000
MAX_AUDIT_PAGE = 1000
# An audit entry's id: "<ms>-<seq>"; in a sharded pool "<ms>-<seq>-<slot>" (reads.py). Numbers
# as Redis writes them (no sign, no leading zero), of at most 19 digits: below 2^64, as a
# stream id's parts are, and beyond any id the service writes.
_ID_PART = r"(0|[1-9][0-9]{0,18})"
AUDIT_ID_PATTERN = rf"^{_ID_PART}-{_ID_PART}(-(0|[1-9][0-9]{{0,2}}))?$"
# The validation context key of the number of slots of the pool (routing.py gives it): 1, or
# POOL_SHARDS + 1 in a sharded pool. A cursor is checked against the pool it is sent to.
POOL_SLOTS = "pool_slots"
CODE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
USER_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"  # visible ASCII: no spaces, controls or non-ASCII
# The published patterns say exactly what the validators accept: > 0, no leading zeros.
FLAT_PATTERN = (
    r"^([1-9][0-9]{0,11}(\.[0-9]{1,4})?|0\.([1-9][0-9]{0,3}|0[1-9][0-9]{0,2}|00[1-9][0-9]?|000[1-9]))$"
)
PERCENT_PATTERN = r"^([1-9][0-9]?(\.[0-9]{1,2})?|100(\.00?)?|0\.([1-9][0-9]?|0[1-9]))$"
MAX_FLAT_INTEGER = 999_999_999_999
_FLAT = re.compile(FLAT_PATTERN)
_PERCENT = re.compile(PERCENT_PATTERN)


class CouponType(StrEnum):
    FREE = "FREE"
    STANDARD = "STANDARD"
    MEGADEAL = "MEGADEAL"


Code = Annotated[str, StringConstraints(pattern=CODE_PATTERN)]
UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)]
BATCH_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
BatchId = Annotated[str, StringConstraints(pattern=BATCH_ID_PATTERN)]
MAX_REDEMPTIONS = 1_000_000_000  # a batch's cap, at most
MaxRedemptions = Annotated[
    int,
    Field(
        ge=0,
        le=MAX_REDEMPTIONS,
        description="most redemptions of the batch's coupons in all (rollbacks give back); "
        "a redemption beyond answers 409 batch_exhausted",
    ),
]


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
    if not _FLAT.fullmatch(text):
        raise PydanticCustomError(
            "flat_amount", "must be greater than 0, with at most 12 digits before the point and 4 after"
        )
    return text


def _percent(value: Any) -> int | str:
    text = _exact_number(value)
    if not _PERCENT.fullmatch(text):
        raise PydanticCustomError(
            "percent", "must be greater than 0 and at most 100, with at most 2 decimals"
        )
    return percent_value(text)


def percent_value(text: str) -> int | str:
    """A stored percent as answered: an integer when whole ("100.00" -> 100), else its text."""
    whole, _, fraction = text.partition(".")
    return int(whole) if fraction.strip("0") == "" else text


def _in_future(value: datetime) -> datetime:
    # Whatever is accepted must come back out: a time past year 9999 in UTC (such as
    # 9999-12-31T23:59:59-23:59) could be stored but never answered.
    too_late = PydanticCustomError("expiry_range", "must be at most 9999-12-31T23:59:59.999Z (in UTC)")
    try:
        in_utc = value.astimezone(UTC)
    except OverflowError:  # before year 1 or after year 9999, once in UTC
        in_utc = None
    if (in_utc is None and value.year > 1) or (in_utc is not None and in_utc > LATEST_EXPIRY):
        raise too_late
    if in_utc is None or in_utc.timestamp() <= time.time():
        raise PydanticCustomError("expired", "must be in the future")
    return value


FlatAmount = Annotated[
    str,
    BeforeValidator(_flat_amount),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "string", "pattern": FLAT_PATTERN, "examples": ["12.50"]},
                {"type": "integer", "minimum": 1, "maximum": MAX_FLAT_INTEGER},
            ]
        },
        mode="validation",
    ),
    WithJsonSchema({"type": "string", "pattern": FLAT_PATTERN}, mode="serialization"),
]
Percent = Annotated[
    int | str,
    BeforeValidator(_percent),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": 100},
                {"type": "string", "pattern": PERCENT_PATTERN},
            ]
        },
        mode="validation",
    ),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": 100, "description": "a whole percent"},
                {"type": "string", "pattern": PERCENT_PATTERN, "description": "with decimals"},
            ]
        },
        mode="serialization",
    ),
]
FutureTime = Annotated[AwareDatetime, AfterValidator(_in_future)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    # Fields added to a request since a release, left out of its fingerprint (pool/keyed.py)
    # while they hold their default: a keyed request retried across an upgrade stays the same
    # request, and replays, rather than idempotency_key_reused.
    added_fields: ClassVar[tuple[str, ...]] = ()

    def fingerprint_json(self) -> bytes:
        """The request as its Idempotency-Key fingerprint reads it: spacing and defaults aside."""
        fields = type(self).model_fields
        unset = {name for name in self.added_fields if getattr(self, name) == fields[name].default}
        return self.model_dump_json(exclude=unset or None).encode()


class FlatDiscount(_Body):
    kind: Literal["flat"]
    value: FlatAmount


class PercentDiscount(_Body):
    kind: Literal["percent"]
    value: Percent


Discount = Annotated[FlatDiscount | PercentDiscount, Field(discriminator="kind")]
# The tags of the discriminated unions, which pydantic puts into an error's location.
UNION_TAGS = frozenset(
    get_args(m.model_fields["kind"].annotation)[0] for m in (FlatDiscount, PercentDiscount)
)


EARLIEST_START = datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)
METADATA_KEY_PATTERN = r"^[A-Za-z0-9_.-]{1,40}$"
MAX_METADATA_KEYS = 50
MAX_METADATA_VALUE = 500
MetadataKey = Annotated[str, StringConstraints(pattern=METADATA_KEY_PATTERN)]
MetadataValue = Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE)]
Metadata = Annotated[
    dict[MetadataKey, MetadataValue],
    Field(
        max_length=MAX_METADATA_KEYS,
        description=f"up to {MAX_METADATA_KEYS} keys of 1-40 characters `[A-Za-z0-9_.-]`, each with a "
        f"string of up to {MAX_METADATA_VALUE} characters (any Unicode text); given back with the "
        "coupon, its allocations, validations and a user's coupons",
        # pydantic states the keys' pattern as patternProperties, which alone lets other keys be
        # anything: none may be.
        json_schema_extra={"additionalProperties": False},
    ),
]


def _starts_before_expiry(value: datetime | None, info: ValidationInfo) -> datetime | None:
    if value is None:
        return None
    try:
        in_utc = value.astimezone(UTC)
    except OverflowError:
        in_utc = None
    if in_utc is None or in_utc < EARLIEST_START:
        raise PydanticCustomError("start_range", "must be after 1970-01-01T00:00:00Z (in UTC)")
    expires_at = info.data.get("expires_at")
    if expires_at is not None and in_utc >= expires_at:
        raise PydanticCustomError("start_after_expiry", "must be before expires_at")
    return value


class CouponIn(_Body):
    code: Code
    type: CouponType = CouponType.STANDARD
    discount: Discount
    expires_at: FutureTime = Field(examples=["2099-12-31T23:59:59Z"])
    max_usages: int = Field(default=1, ge=1, le=1_000_000)
    starts_at: Annotated[AwareDatetime | None, AfterValidator(_starts_before_expiry)] = Field(
        default=None,
        description="when the coupon joins the pool (before expires_at); until then it is scheduled: "
        "never allocated, and validation answers coupon_not_yet_valid. Without it, or in the past: at once",
    )
    metadata: Metadata | None = None


class UploadRequest(_Body):
    # Refused with an error of its own rather than a 422: pydantic's error type -> the error's code.
    error_codes: ClassVar[dict[tuple[tuple[int | str, ...], str], str]] = {
        (("coupons",), "too_long"): "too_many_coupons"
    }
    added_fields: ClassVar[tuple[str, ...]] = ("batch", "max_redemptions")
    coupons: list[CouponIn] = Field(max_length=MAX_UPLOAD)
    batch: BatchId | None = Field(
        default=None,
        description="the batch the coupons join (1-64 of A-Z a-z 0-9 _ . -): uploads naming the same "
        "batch add to it; without it the upload makes a batch of its own, whose id the answer gives",
    )
    max_redemptions: MaxRedemptions | None = Field(
        default=None, description="the batch's cap of redemptions (as PATCH /v1/batches/{batch} sets it)"
    )


MAX_HOLD_S = 86_400


class AllocationRequest(_Body):
    added_fields: ClassVar[tuple[str, ...]] = ("hold_s",)
    user_id: UserId
    type: CouponType = CouponType.STANDARD
    hold_s: int | None = Field(
        default=None,
        ge=1,
        le=MAX_HOLD_S,
        description="hold the coupon this many seconds (at most until it expires) instead of giving "
        "it for good: a redemption within the hold confirms it, a release ends it, and at its end "
        "it goes back to the pool by itself (a redemption then answers 409 hold_expired)",
    )


class RedemptionRequest(_Body):
    code: Code
    user_id: UserId
    type: CouponType | None = None


class ValidationRequest(RedemptionRequest):
    """Would this redemption succeed now?"""


class ReleaseRequest(RedemptionRequest):
    """Give back an allocated, unredeemed usage."""


class RollbackRequest(RedemptionRequest):
    """Undo a redemption."""


class UserPath(_Body):
    """The path of GET /v1/users/{user_id}/coupons (percent-encode what a path cannot hold)."""

    user_id: UserId


# A user's coupons' cursor, "<allocated_at ms>.<code>", as the service writes it.
USER_CURSOR_PATTERN = r"^(0|[1-9][0-9]{0,14})\.[A-Za-z0-9_-]{1,64}$"
MAX_USER_PAGE = 100


class UserCouponsQuery(_Body):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)
    limit: int = Field(default=50, ge=1, le=MAX_USER_PAGE, description="most coupons to return")
    after: Annotated[str, StringConstraints(pattern=USER_CURSOR_PATTERN)] | None = Field(
        default=None,
        description="the `next` of the previous page: `<allocated_at ms>.<code>`; any other form is "
        "refused (422)",
    )


class CouponPath(_Body):
    """The path of GET /v1/coupons/{code}."""

    code: Code


class BatchPath(_Body):
    """The path of /v1/batches/{batch}..."""

    batch: BatchId


MAX_BATCH_PAGE = 100


class BatchesQuery(_Body):
    """The query of GET /v1/batches."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)
    limit: int = Field(default=20, ge=1, le=MAX_BATCH_PAGE, description="most batches to return")
    after: BatchId | None = Field(
        default=None, description="the `next` of the previous page: batches after this id"
    )


class BatchPatch(_Body):
    """PATCH /v1/batches/{batch}: what changes (a field left out stays as it is)."""

    max_redemptions: MaxRedemptions | None = Field(
        description="the new cap of redemptions; null removes it (the batch counts redemptions again "
        "from those made so far when a cap is set later)"
    )


def _of_this_pool(value: str, info: ValidationInfo) -> str:
    slots = (info.context or {}).get(POOL_SLOTS)
    if value.startswith(cursor.PREFIX):
        if slots == 1:
            raise PydanticCustomError(
                "stream_id", "this pool has one slot: an entry id is <ms>-<seq>, not a cursor"
            )
        try:
            positions = cursor.decode(value)
        except cursor.CursorError:
            raise PydanticCustomError(
                "stream_id", "not a cursor this service wrote (a page's next)"
            ) from None
        if slots is not None and len(positions) != slots:
            raise PydanticCustomError(
                "stream_id", "a cursor of a pool of {count} slots, not of this one's {slots}",
                {"count": len(positions), "slots": slots},
            )  # fmt: skip
        return value
    parts = value.split("-")
    if slots == 1 and len(parts) == 3:
        raise PydanticCustomError(
            "stream_id", "this pool has one slot: an entry id is <ms>-<seq>, without a slot part"
        )
    if slots is not None and slots > 1:
        if len(parts) == 2:
            raise PydanticCustomError("stream_id", "this pool is sharded: an entry id is <ms>-<seq>-<slot>")
        if int(parts[2]) >= slots:
            raise PydanticCustomError(
                "stream_id", "the slot (an id's third part) must be 0 to {last}", {"last": slots - 1}
            )
    return value


StreamId = Annotated[
    str,
    StringConstraints(pattern=f"{AUDIT_ID_PATTERN}|{cursor.PATTERN}", max_length=cursor.MAX_LENGTH),
    AfterValidator(_of_this_pool),
]


class AuditQuery(_Body):
    """The query of GET /v1/audit (query values are text, so not strict)."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)
    limit: int = Field(default=100, ge=1, le=MAX_AUDIT_PAGE, description="most entries to return")
    after: StreamId | None = Field(
        default=None,
        description="a page's `next`, or an entry's `id`: only entries after it; without it, the "
        "latest `limit` entries. On one Redis `next` is an entry id, `<ms>-<seq>`. In a sharded pool "
        "`next` is a cursor (`c1.` then base64url) naming a position in each slot's stream, so "
        "following pages never skips an entry written meanwhile; an entry id `<ms>-<seq>-<slot>` "
        "(slot 0 to POOL_SHARDS) is taken too. Any other form is refused (422). `0-0` (sharded: "
        "`0-0-0`) starts at the oldest entry",
    )


# Generation (POST /v1/batches): codes drawn by the service from a pattern.
MAX_GENERATION = 1_000_000  # codes per generated batch
GENERATION_HEADROOM = 10  # a pattern must allow this many times the codes asked for
DEFAULT_CHARSET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0, O, 1 or I: read aloud or typed, unmistaken
PATTERN_SLOT = "#"  # in a pattern, one character drawn from the charset; anything else is itself
MAX_CODE_LENGTH = 64
CHARSET_PATTERN = r"^[A-Za-z0-9_-]{2,64}$"
CODE_PATTERN_PATTERN = (
    r"^[A-Za-z0-9_-]{0,63}#[A-Za-z0-9_#-]{0,63}$"  # one # at least (and 64 at most: max_length)
)
AFFIX_PATTERN = r"^[A-Za-z0-9_-]{0,63}$"


def _distinct(charset: str) -> str:
    if len(set(charset)) != len(charset):
        raise PydanticCustomError("charset_repeats", "each character may appear once")
    return charset


def _has_slot(pattern: str) -> str:
    if PATTERN_SLOT not in pattern:
        raise PydanticCustomError("pattern_without_slot", "must hold at least one # (a drawn character)")
    return pattern


Charset = Annotated[
    str,
    StringConstraints(pattern=CHARSET_PATTERN),
    AfterValidator(_distinct),
    Field(description="2-64 distinct characters of A-Z a-z 0-9 _ - that each # is drawn from"),
]
CodePattern = Annotated[
    str,
    StringConstraints(pattern=CODE_PATTERN_PATTERN, max_length=MAX_CODE_LENGTH),
    AfterValidator(_has_slot),
    Field(
        description="1-64 characters: each # is one character drawn from the charset, any other "
        "(A-Z a-z 0-9 _ -) stands for itself; at least one #",
        examples=["MD-########"],
    ),
]
Affix = Annotated[str, StringConstraints(pattern=AFFIX_PATTERN)]


def _one_of(first: str, second: str) -> Callable[[dict[str, Any]], None]:
    """A JSON Schema that takes exactly one of two optional fields, neither null: what the
    model's validator asks (``_given_once``), said in the document too."""

    def schema(doc: dict[str, Any]) -> None:
        for name in (first, second):
            prop = doc["properties"][name]
            kept = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
            doc["properties"][name] = {**next(x for x in prop["anyOf"] if x.get("type") != "null"), **kept}
        doc["oneOf"] = [{"required": [first]}, {"required": [second]}]

    return schema


def _given_once(model: BaseModel, first: str, second: str) -> None:
    """Exactly one of ``first`` and ``second`` given, and not as null."""
    for name in (first, second):
        if name in model.model_fields_set and getattr(model, name) is None:
            raise PydanticCustomError("null_given", "{name} may be left out, not null", {"name": name})
    if (getattr(model, first) is None) == (getattr(model, second) is None):
        raise PydanticCustomError(
            "one_of", "give either {first} or {second}", {"first": first, "second": second}
        )


class CodeConfig(_Body):
    """How a generated code is made: ``prefix``, then ``pattern`` (or ``length`` drawn
    characters), then ``postfix``; 64 characters at most in all."""

    model_config = ConfigDict(json_schema_extra=_one_of("pattern", "length"))

    pattern: CodePattern | None = None
    length: int | None = Field(default=None, ge=1, le=MAX_CODE_LENGTH, description="drawn characters")
    charset: Charset = DEFAULT_CHARSET
    prefix: Affix = Field(default="", description="0-63 characters of A-Z a-z 0-9 _ -, before")
    postfix: Affix = Field(default="", description="0-63 characters of A-Z a-z 0-9 _ -, after")

    @model_validator(mode="after")
    def _one_form(self) -> CodeConfig:
        _given_once(self, "pattern", "length")
        if len(self.template) > MAX_CODE_LENGTH:
            raise PydanticCustomError(
                "code_too_long", "prefix, pattern (or length) and postfix make codes of over 64 characters"
            )
        return self

    @property
    def template(self) -> str:
        """The code's pattern in full: prefix, the drawn characters as #, postfix."""
        return self.prefix + (self.pattern or PATTERN_SLOT * (self.length or 0)) + self.postfix

    @property
    def combinations(self) -> int:
        combinations: int = len(self.charset) ** self.template.count(PATTERN_SLOT)
        return combinations


def _as_uploaded(name: str) -> Any:
    """CouponIn's field ``name``, rules and all: a generated coupon is validated as an uploaded one."""
    return CouponIn.model_fields[name]


class GenerationRequest(_Body):
    """POST /v1/batches: a batch of ``count`` coupons whose codes the service draws."""

    model_config = ConfigDict(json_schema_extra=_one_of("pattern", "code_config"))

    error_codes: ClassVar[dict[tuple[tuple[int | str, ...], str], str]] = {
        ((), "pattern_too_small"): "pattern_too_small"
    }
    type: CouponType = CouponType.STANDARD
    count: int = Field(ge=1, le=MAX_GENERATION, description="codes to generate")
    pattern: CodePattern | None = Field(
        default=None, description=f"the codes' pattern, drawn from the default charset {DEFAULT_CHARSET}"
    )
    code_config: CodeConfig | None = Field(
        default=None, description="instead of `pattern`: a charset of your own, a length, prefix and postfix"
    )
    discount: Discount
    expires_at: FutureTime = _as_uploaded("expires_at")
    starts_at: AwareDatetime | None = _as_uploaded("starts_at")
    max_usages: int = _as_uploaded("max_usages")
    metadata: Metadata | None = _as_uploaded("metadata")
    batch: BatchId | None = Field(
        default=None,
        description="the new batch's id (1-64 of A-Z a-z 0-9 _ . -); one that exists is 409 "
        "batch_conflict. Without it the service makes one",
    )
    max_redemptions: MaxRedemptions | None = Field(default=None, description="the batch's cap of redemptions")

    @model_validator(mode="after")
    def _room_for_count(self) -> GenerationRequest:
        _given_once(self, "pattern", "code_config")
        config = self.codes
        if config.combinations < GENERATION_HEADROOM * self.count:
            raise PydanticCustomError(
                "pattern_too_small",
                "the pattern allows {combinations} codes, fewer than {headroom} times the {count} asked for",
                {"combinations": config.combinations, "headroom": GENERATION_HEADROOM, "count": self.count},
            )
        return self

    @property
    def codes(self) -> CodeConfig:
        """How the codes are made, whichever form the request used."""
        return self.code_config or CodeConfig.model_construct(
            pattern=self.pattern, length=None, charset=DEFAULT_CHARSET, prefix="", postfix=""
        )


ExportFormat = Literal["jsonl", "csv"]  # a Literal: an enum would be a $ref in the query's OpenAPI


class ExportQuery(_Body):
    """The query of GET /v1/batches/{batch}/coupons."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)
    format: ExportFormat | None = Field(
        default=None,
        description="jsonl (application/x-ndjson) or csv (text/csv); it wins over Accept. Without it, "
        "Accept chooses; without either, jsonl",
    )
    expired: bool = Field(
        default=False,
        description="true: coupons past their expiry too (not yet purged); such a file does not load "
        "back with coupon-pool upload, which takes only coupons still to expire",
    )
