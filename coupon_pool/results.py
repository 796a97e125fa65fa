"""The bodies the v1 API answers with, successes and problems."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import ConfigDict, Field

from .models import MAX_LISTED_HOLDERS, CouponType, Discount, _Body


class UploadResult(_Body):
    created: int
    duplicates: list[str] = Field(description="codes not stored because they already existed")
    batch: str = Field(description="the batch the coupons joined (named in the request, or made for it)")


HolderStatus = Literal["allocated", "held", "redeemed", "hold_expired"]


class Holder(_Body):
    user_id: str
    allocated_at: datetime
    redeemed_at: datetime | None
    status: HolderStatus = Field(
        description="held: an allocation with hold_s, until hold_expires_at; hold_expired: a hold that "
        "ended unconfirmed (the user holds the coupon no more)"
    )
    hold_expires_at: datetime | None = Field(description="a hold's end; null for an allocation for good")


class Coupon(_Body):
    code: str
    type: CouponType
    discount: Discount
    expires_at: datetime
    max_usages: int
    allocated: int
    used: int
    created_at: datetime
    starts_at: datetime | None = Field(description="when it joins the pool; null: at its upload")
    scheduled: bool = Field(description="its start is ahead: it is not allocated yet")
    metadata: dict[str, str]
    batch: str | None = Field(description="its batch; null for a coupon stored before batches existed")
    disabled: bool = Field(
        description="disabled, on its own or with its batch: never allocated, not redeemable"
    )
    allocations: list[Holder] = Field(
        description=f"who holds it, oldest allocation first; at most {MAX_LISTED_HOLDERS} listed"
    )


# The answers of the hot paths are plain dataclasses, which orjson writes directly: a
# pydantic model costs several microseconds more to build and serialize per request (and
# a frozen dataclass one more: its __init__ goes through object.__setattr__).
@dataclass(slots=True)
class Allocation:
    __pydantic_config__ = ConfigDict(extra="forbid")
    code: str
    type: CouponType
    discount: Discount
    expires_at: datetime
    user_id: str
    allocated_at: datetime
    hold_expires_at: Annotated[
        datetime | None,
        Field(description="with hold_s: when the hold ends unless a redemption confirms it; else null"),
    ]
    metadata: Annotated[dict[str, str], Field(description="the coupon's, as uploaded ({} without)")]


@dataclass(slots=True)
class Redemption:
    __pydantic_config__ = ConfigDict(extra="forbid")
    code: str
    type: CouponType
    user_id: str
    redeemed_at: datetime
    used: int
    max_usages: int


@dataclass(slots=True)
class Release:
    __pydantic_config__ = ConfigDict(extra="forbid")
    code: str
    type: CouponType
    user_id: str
    released_at: datetime
    allocated: Annotated[int, Field(description="its usages allocated now, this one given back")]
    max_usages: int


@dataclass(slots=True)
class Rollback:
    __pydantic_config__ = ConfigDict(extra="forbid")
    code: str
    type: CouponType
    user_id: str
    rolled_back_at: datetime
    used: Annotated[int, Field(description="its usages redeemed now, this one undone")]
    max_usages: int


UserCouponStatus = Literal["allocated", "held", "redeemed", "hold_expired", "expired"]


class UserCoupon(_Body):
    code: str
    type: CouponType
    discount: Discount
    expires_at: datetime
    allocated_at: datetime
    redeemed_at: datetime | None
    hold_expires_at: datetime | None = Field(description="a hold's end; null for an allocation for good")
    status: UserCouponStatus = Field(
        description="redeemed; else hold_expired once a hold ended unconfirmed (the user holds it no "
        "more); else expired once past expires_at; else held (a hold, until hold_expires_at) or allocated"
    )
    metadata: dict[str, str]


class UserCouponsPage(_Body):
    coupons: list[UserCoupon] = Field(description="newest allocation first")
    next: str | None = Field(
        description="pass as `after` for the page that follows; only null ends the listing: a page "
        "may be empty, or shorter than `limit`, and still have a `next` (the coupons it met had been "
        "deleted by the purge; each request reads a bounded number of entries)"
    )


class ValidatedCoupon(_Body):
    code: str
    type: CouponType
    discount: Discount
    expires_at: datetime
    starts_at: datetime | None
    hold_expires_at: datetime | None = Field(description="the user's hold's end, if they hold it so")
    metadata: dict[str, str]


class Validation(_Body):
    valid: bool = Field(description="a redemption sent now would succeed")
    code: str | None = Field(
        description="when not valid, the error code the redemption would answer (coupon_not_found, "
        "type_mismatch, coupon_not_yet_valid, not_allocated, already_redeemed, hold_expired, "
        "coupon_expired); null when valid"
    )
    detail: str | None = Field(description="when not valid, what the redemption would say")
    coupon: ValidatedCoupon | None = Field(
        description="the coupon, when the user holds (or held) an allocation of it; null otherwise "
        "(coupon_not_found, type_mismatch, coupon_not_yet_valid, not_allocated): a coupon's discount and "
        "metadata are not told to a caller that only names its code"
    )


BatchType = Literal["FREE", "STANDARD", "MEGADEAL", "MIXED"]


class Generation(_Body):
    """A batch's generation job: codes drawn by the service."""

    status: Literal["running", "done", "failed"]
    count: int = Field(description="codes asked for")
    stored: int = Field(description="codes stored so far")
    error: str | None = Field(description="why it failed; null unless failed")


class Batch(_Body):
    batch: str
    type: BatchType = Field(description="its coupons' type; MIXED when they have several")
    source: Literal["upload", "generation"]
    created_at: datetime
    created: int = Field(description="coupons stored in it")
    allocated: int = Field(
        description="usages allocated now (net of releases and ended holds), of coupons not purged"
    )
    used: int = Field(description="usages redeemed, net of rollbacks")
    available: int = Field(
        description="usages not allocated, of coupons not purged (an expired coupon counts until the purge "
        "takes it; a disabled batch's still count: see `disabled`)"
    )
    purged: int = Field(description="coupons the purge took (deleted unused, or retired)")
    disabled: bool = Field(description="the whole batch is disabled")
    disabled_coupons: int = Field(description="coupons not purged disabled on their own")
    max_redemptions: int | None = Field(description="its cap of redemptions; null: none")
    redeemed: int | None = Field(description="redemptions counted against the cap; null without a cap")
    tidying: bool = Field(
        description="the available sets are being tidied after a disable or enable (the rules already hold)"
    )
    generation: Generation | None = Field(description="its generation job; null for an uploaded batch")


class BatchPage(_Body):
    batches: list[Batch]
    next: str | None = Field(description="`after` for the next page; null on the last")


class CouponState(_Body):
    """The answer of POST /v1/coupons/{code}/disable and /enable."""

    code: str
    type: CouponType
    disabled: bool = Field(description="disabled now, on its own or with its batch")
    disabled_on_its_own: bool
    batch: str | None
    batch_disabled: bool


class TypeStats(_Body):
    created: int
    allocated: int = Field(description="usages allocated, net of releases")
    used: int = Field(description="usages redeemed, net of rollbacks")
    released: int = Field(description="allocations given back to the pool")
    rolled_back: int = Field(description="redemptions undone")
    purged: int = Field(description="expired coupons deleted unused by the purge")
    available: int = Field(description="unexpired coupons with at least one free usage")
    held: int = Field(description="allocations held (hold_s) now, neither confirmed nor ended")
    hold_expired: int = Field(description="holds that ended unconfirmed, their usage back in the pool")
    scheduled: int = Field(description="coupons whose start is ahead: not in the pool yet")
    disabled: int = Field(
        description="coupons not purged that are disabled, on their own or with their batch"
    )


def _every_type(schema: dict[str, Any]) -> None:
    """A map keyed by coupon type, published as an object with one property per type."""
    value = schema.pop("additionalProperties")
    schema.pop("propertyNames", None)
    schema["properties"] = {t.value: value for t in CouponType}
    schema["required"] = [t.value for t in CouponType]
    schema["additionalProperties"] = False


V = TypeVar("V")
ByType = Annotated[dict[CouponType, V], Field(json_schema_extra=_every_type)]


class Stats(_Body):
    types: ByType[TypeStats]
    totals: TypeStats


class TypeLevel(_Body):
    low: bool = Field(description="below its pool-low threshold at the latest check (never checked: false)")
    available: int | None = Field(description="available coupons at that check; null: never checked")
    threshold: int | None = Field(
        description="the threshold it applied, in coupons (one in minutes of supply, at the allocation "
        "rate then); null: never checked"
    )


class PoolLevels(_Body):
    """Pool-low events (POOL_LOW_<TYPE>): each type's level as the latest check recorded it."""

    types: ByType[TypeLevel]


class PurgeResult(_Body):
    purged: ByType[int] = Field(description="expired, never redeemed: deleted")
    retired: ByType[int] = Field(description="expired, redeemed at least once: out of the pool, record kept")


class MegadealStatus(_Body):
    slots_in_use: int = Field(description="admitted MEGADEAL requests holding a slot, all processes")
    max_concurrent: int = Field(description="MEGADEAL_MAX_CONCURRENT")
    queued: int = Field(description="MEGADEAL requests waiting for admission, all processes")
    admitted_last_second: int = Field(description="admissions in the last second, all processes")
    rate_per_s: int = Field(description="MEGADEAL_RATE_PER_S: admissions in any rolling second")
    max_wait_s: float = Field(description="MEGADEAL_MAX_WAIT_S: the longest a request waits")


class WebhookEndpoint(_Body):
    """One webhook endpoint's deliveries, as Redis holds them for every process."""

    endpoint: str = Field(description="its name (default: the one WEBHOOK_URL configures)")
    url: str = Field(description="WEBHOOK_URL without its user info or query (either may hold a credential)")
    group: str = Field(description="its consumer group of the audit trail")
    parked: int = Field(
        description="batches parked after their retries ran out (WEBHOOK_RETRY_HORIZON_S), all streams; "
        "`coupon-pool webhooks redeliver` sends them again"
    )
    parked_by_stream: list[int] = Field(description="parked batches per audit stream, the main slot's first")
    pending: int = Field(description="events handed to a process and not yet acknowledged")
    undelivered: int | None = Field(
        description="events not yet handed to any process; null when Redis cannot tell (after a trim past "
        "the group)"
    )
    oldest_undelivered_age_s: float = Field(
        description="age of the oldest event the endpoint has not taken (pending or undelivered); 0: none"
    )
    # The endpoint's counters, all processes, since its keys were made (deliveries.COUNTS).
    batches_delivered: int = Field(description="batches POSTed and answered 2xx")
    events_delivered: int = Field(description="events in those batches")
    events_skipped: int = Field(description="events acknowledged unsent: their op is not in WEBHOOK_OPS")
    failures: int = Field(description="POSTs answered non-2xx, or failed (connection, timeout)")
    retries: int = Field(description="batches POSTed again after a failure, each time")
    batches_parked: int = Field(description="batches parked after their retries ran out, ever")


class WebhooksStatus(_Body):
    configured: bool = Field(
        description="WEBHOOK_URL is set: each `coupon-pool serve` runs a process that delivers the trail"
    )
    endpoints: list[WebhookEndpoint] = Field(description="one (default) when configured; empty when not")


class Health(_Body):
    status: Literal["ok"]


class MemoryStatus(_Body):
    used_bytes: int = Field(description="what Redis uses now")
    max_bytes: int = Field(description="Redis's maxmemory; 0: no limit")
    uploads_stop_at_bytes: int | None = Field(
        description="uploads are refused (507 store_full) from here on, so allocations and "
        "redemptions keep the rest; null without a limit"
    )


class Readiness(_Body):
    status: Literal["ready"]
    memory: MemoryStatus


class AuditEntry(_Body):
    """One entry of the audit stream; fields beyond these depend on ``op``."""

    model_config = ConfigDict(extra="allow")
    id: str
    time: datetime
    op: str


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


# A coupon as a CSV row: the columns `coupon-pool upload` reads (models.CouponIn's fields,
# the discount in two), then those an export adds, its state, which the upload reads past.
COUPON_COLUMNS = (
    "code", "type", "discount_kind", "discount_value", "expires_at", "max_usages", "starts_at", "metadata",
)  # fmt: skip
EXPORT_STATE_COLUMNS = ("allocated", "used", "disabled", "created_at")


@dataclass(slots=True)
class ExportedCoupon:
    """One coupon of a batch's export (pool/exporting.py): what an upload takes, and its state."""

    code: str
    type: CouponType
    discount: Discount
    expires_at: datetime
    max_usages: int
    starts_at: datetime | None
    metadata_json: str  # its metadata as stored, a JSON object ("{}" without)
    allocated: int
    used: int
    disabled: bool  # on its own or with its batch
    created_at: datetime
