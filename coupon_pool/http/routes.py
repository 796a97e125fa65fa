"""The v1 API: one handler per operation, and the table that declares each of them once."""

from __future__ import annotations

from .. import errors
from ..models import (
    AllocationRequest,
    AuditQuery,
    CouponPath,
    CouponType,
    RedemptionRequest,
    ReleaseRequest,
    RollbackRequest,
    UploadRequest,
    UserCouponsQuery,
    UserPath,
    ValidationRequest,
)
from ..pool.deliveries import webhook_status
from ..results import (
    Allocation,
    AuditPage,
    Coupon,
    Health,
    MegadealStatus,
    MemoryStatus,
    PoolLevels,
    PurgeResult,
    Readiness,
    Redemption,
    Release,
    Rollback,
    Stats,
    UploadResult,
    UserCouponsPage,
    Validation,
    WebhooksStatus,
)
from .auth import Role
from .batch_routes import BATCH_OPERATIONS
from .export_routes import EXPORT_OPERATIONS
from .generation_routes import GENERATION_OPERATIONS
from .inputs import Call
from .lookups import LOOKUP_FAILURES, Lookup, spend_lookup
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .routing import Operation
from .upload_worker import UploadWorker
from .validation import validate_json

INLINE_UPLOAD_BYTES = 64 * 1024  # larger uploads go to the upload worker process


async def allocate(call: Call, body: AllocationRequest) -> Allocation:
    """Of the unexpired coupons of the type with a free usage that the user does not hold yet,
    the one expiring first. MEGADEAL requests pass the MEGADEAL gate first (and may wait)."""
    call.note(type=body.type, user_id=body.user_id)
    if body.type is CouponType.MEGADEAL:
        allocation = await call.gate.allocate(
            body.user_id, hold_s=body.hold_s, started=call.started, gone=call.gone
        )
    else:
        allocation = await call.store.allocate(body.user_id, body.type, body.hold_s)
    call.note(code=allocation.code)
    return allocation


async def redeem(call: Call, body: RedemptionRequest) -> Redemption:
    """The user must hold an unredeemed allocation of the unexpired coupon; each allocation
    is redeemed once."""
    call.note(code=body.code, user_id=body.user_id)
    redemption = await call.store.redeem(body.code, body.user_id, body.type)
    call.note(type=redemption.type, used=redemption.used)
    return redemption


async def validate(call: Call, body: ValidationRequest) -> Validation:
    """Would this redemption succeed now? Answered by redeem's own rules, with the coupon (its
    discount, dates and metadata); a `code` as the redemption would answer when not. Changes
    nothing: no counter, no audit entry, no Idempotency-Key record. An answer that is not
    valid spends the caller's budget of failed lookups as a failed redemption does."""
    call.note(code=body.code, user_id=body.user_id)
    result = await call.store.validate(body.code, body.user_id, body.type)
    call.note(valid=result.valid)
    if result.code in LOOKUP_FAILURES:
        await spend_lookup(call)
    return result


async def release(call: Call, body: ReleaseRequest) -> Release:
    """The user's allocated, unredeemed usage goes back to the pool (available again unless
    the coupon has expired); the user may be allocated that coupon again later."""
    call.note(code=body.code, user_id=body.user_id)
    released = await call.store.release(body.code, body.user_id, body.type)
    call.note(type=released.type, allocated=released.allocated)
    return released


async def rollback(call: Call, body: RollbackRequest) -> Rollback:
    """The user's redemption is undone: the allocation is unredeemed again and may be redeemed
    again. Refused once the coupon has expired (410 coupon_expired)."""
    call.note(code=body.code, user_id=body.user_id)
    undone = await call.store.rollback(body.code, body.user_id, body.type)
    call.note(type=undone.type, used=undone.used)
    return undone


async def user_coupons(call: Call, path: UserPath, query: UserCouponsQuery) -> UserCouponsPage:
    """What the user holds (allocated, redeemed or expired), newest allocation first; a coupon
    the purge deleted is no longer listed. Percent-encode the user id in the path."""
    return await call.store.user_coupons(path.user_id, query.limit, query.after)


async def upload_coupons(call: Call, body: bytes) -> UploadResult:
    """One invalid item refuses the whole request; a code that already exists is not stored
    and comes back in `duplicates`, so sending the same upload again stores nothing twice."""
    idem = call.idempotency
    if len(body) < INLINE_UPLOAD_BYTES:
        request = validate_json(body, UploadRequest)
        if idem:
            idem.identify(body)
        result = await call.store.upload(request.coupons, request.batch, request.max_redemptions)
    else:
        result = await upload_worker(call).upload(body, idem)
    duplicates = len(result.duplicates)
    call.note(
        coupons=result.created + duplicates, created=result.created, duplicates=duplicates, batch=result.batch
    )
    return result


def upload_worker(call: Call) -> UploadWorker:
    """The app's upload worker, started on the first large upload (it takes a second to start)."""
    state = call.request.app.state
    if state.upload_worker is None:
        state.upload_worker = UploadWorker(state.settings)
    worker: UploadWorker = state.upload_worker
    return worker


async def get_coupon(call: Call, path: CouponPath) -> Coupon:
    """Its counts, and who holds it (at most 1,000 listed)."""
    return await call.store.get_coupon(path.code)


async def stats(call: Call) -> Stats:
    """Created, allocated, used, purged and available, per type and in total."""
    return await call.store.stats()


async def levels(call: Call) -> PoolLevels:
    """Pool-low events: each type's level against its threshold, as the latest check saw it."""
    return await call.store.levels.levels()


async def megadeal(call: Call) -> MegadealStatus:
    """The MEGADEAL gate now: slots in use, requests queued, admissions in the last second, and
    its limits."""
    gate = await call.gate.status()
    limits = call.gate.limits
    return MegadealStatus(
        slots_in_use=gate.slots,
        max_concurrent=limits.max_concurrent,
        queued=gate.queued,
        admitted_last_second=gate.admitted_last_s,
        rate_per_s=limits.rate_per_s,
        max_wait_s=limits.max_wait_s,
    )


async def purge(call: Call) -> PurgeResult:
    """Expired coupons never redeemed are deleted; those redeemed are retired (kept, out of the
    pool). Also runs every PURGE_INTERVAL_S."""
    result = await call.store.purge()
    call.note(purged=sum(result.purged.values()), retired=sum(result.retired.values()))
    return result


async def audit(call: Call, query: AuditQuery) -> AuditPage:
    """Without `after`, the latest `limit` entries; with it, the entries that follow it."""
    return await call.store.audit(query.limit, query.after)


async def webhooks(call: Call) -> WebhooksStatus:
    """Webhook delivery, as `coupon-pool webhooks status` shows it: each endpoint's parked batches
    and what it has not taken yet. Without WEBHOOK_URL, `configured` false and no endpoint."""
    hooks = call.request.app.state.settings.hooks
    if not hooks:
        return WebhooksStatus(configured=False, endpoints=[])
    return WebhooksStatus(
        configured=True, endpoints=await webhook_status(call.store.ctx, call.store.feeds, hooks)
    )


async def metrics(call: Call) -> bytes:
    """Request latencies of this process; the pool's counters, the MEGADEAL gate, Redis's
    memory, the consumer groups' backlogs, the types low on coupons and the webhook
    endpoint's deliveries, from Redis."""
    stats, gate, memory = await call.store.stats(), await call.gate.status(), await call.store.memory()
    feeds = await call.store.feeds.status()
    low = await call.store.levels.low()
    hooks = await webhook_status(call.store.ctx, call.store.feeds, call.request.app.state.settings.hooks)
    rendered: bytes = call.request.app.state.metrics.render(stats, gate, memory, feeds, low, hooks)
    return rendered


async def healthz(call: Call) -> Health:
    """Answers while the process serves, whatever the state of Redis."""
    return Health(status="ok")


async def readyz(call: Call) -> Readiness:
    """Answers 200 when Redis answers, with its memory headroom; else 503 store_unavailable."""
    memory = await call.store.memory()
    stop_at = call.store.uploads_stop_at(memory)
    status = MemoryStatus(used_bytes=memory.used, max_bytes=memory.max, uploads_stop_at_bytes=stop_at)
    return Readiness(status="ready", memory=status)


async def openapi(call: Call) -> bytes:
    """The OpenAPI 3.1 document of this service, derived from its route declarations."""
    document: bytes = call.request.app.state.openapi
    return document


OPERATIONS = (
    # The hot routes first: the router tries routes in order.
    Operation(
        method="POST", path="/v1/allocations", handler=allocate, tag="coupons",
        summary="Allocate an available coupon to a user",
        body=AllocationRequest, response=Allocation, status=201, idempotent=True,
        errors=(errors.PoolEmpty, errors.UserLimitReached, errors.MegadealBusy),
    ),
    Operation(
        method="POST", path="/v1/redemptions", handler=redeem, tag="coupons",
        summary="Record the use of an allocated coupon",
        body=RedemptionRequest, response=Redemption, status=201, idempotent=True, lookup=Lookup.FAILURES,
        errors=(errors.CouponNotFound, errors.CouponExpired, errors.TypeMismatch, errors.NotAllocated,
                errors.AlreadyRedeemed, errors.HoldExpired, errors.CouponNotYetValid, errors.CouponDisabled,
                errors.BatchExhausted),
    ),
    Operation(
        method="POST", path="/v1/validations", handler=validate, tag="coupons",
        summary="Would a redemption succeed now? (changes nothing)", role=Role.CLIENT,
        body=ValidationRequest, response=Validation, status=200,
        errors=(errors.TooManyFailedLookups,),
    ),
    Operation(
        method="POST", path="/v1/releases", handler=release, tag="coupons",
        summary="Give an allocated, unredeemed coupon back to the pool",
        body=ReleaseRequest, response=Release, status=201, idempotent=True, lookup=Lookup.FAILURES,
        errors=(errors.CouponNotFound, errors.TypeMismatch, errors.NotAllocated, errors.AlreadyRedeemed,
                errors.HoldExpired),
    ),
    Operation(
        method="POST", path="/v1/rollbacks", handler=rollback, tag="coupons",
        summary="Undo a redemption",
        body=RollbackRequest, response=Rollback, status=201, idempotent=True, lookup=Lookup.FAILURES,
        errors=(errors.CouponNotFound, errors.CouponExpired, errors.TypeMismatch, errors.NotAllocated,
                errors.NotRedeemed, errors.HoldExpired),
    ),
    Operation(
        method="POST", path="/v1/coupons", handler=upload_coupons, tag="coupons",
        summary="Upload up to 50,000 coupons", role=Role.ADMIN,
        body=UploadRequest, large_body=True, response=UploadResult, status=201, idempotent=True,
        errors=(errors.TooManyCoupons, errors.UploadWorkerLost),
    ),
    *BATCH_OPERATIONS,
    *GENERATION_OPERATIONS,
    *EXPORT_OPERATIONS,
    Operation(
        method="GET", path="/v1/coupons/{code}", handler=get_coupon, tag="coupons",
        summary="A coupon with its usage counts",
        path_params=CouponPath, response=Coupon, errors=(errors.CouponNotFound,), lookup=Lookup.EVERY,
    ),
    Operation(
        method="GET", path="/v1/users/{user_id:path}/coupons", handler=user_coupons, tag="coupons",
        summary="The coupons a user holds",
        path_params=UserPath, query=UserCouponsQuery, response=UserCouponsPage,
    ),
    Operation(
        method="GET", path="/v1/stats", handler=stats, tag="pool",
        summary="Counters by coupon type", response=Stats,
    ),
    Operation(
        method="GET", path="/v1/levels", handler=levels, tag="pool",
        summary="Which types are low on coupons (pool-low events)", response=PoolLevels,
    ),
    Operation(
        method="GET", path="/v1/megadeal", handler=megadeal, tag="pool",
        summary="The MEGADEAL gate now", response=MegadealStatus,
    ),
    Operation(
        method="POST", path="/v1/purge", handler=purge, tag="pool",
        summary="Remove expired coupons now", role=Role.ADMIN, response=PurgeResult,
    ),
    Operation(
        method="GET", path="/v1/audit", handler=audit, tag="pool",
        summary="The audit trail, oldest first", role=Role.ADMIN, query=AuditQuery, response=AuditPage,
    ),
    Operation(
        method="GET", path="/v1/webhooks", handler=webhooks, tag="pool",
        summary="Webhook delivery: parked batches and backlog", role=Role.ADMIN, response=WebhooksStatus,
    ),
    Operation(
        method="GET", path="/metrics", handler=metrics, tag="operations",
        summary="Prometheus metrics", media_type=METRICS_CONTENT_TYPE,
    ),
    Operation(
        method="GET", path="/healthz", handler=healthz, tag="operations",
        summary="The process is up", role=None, uses_store=False, response=Health,
    ),
    Operation(
        method="GET", path="/readyz", handler=readyz, tag="operations",
        summary="Redis answers", role=None, response=Readiness,
    ),
    Operation(
        method="GET", path="/openapi.json", handler=openapi, tag="operations",
        summary="This document", role=None, uses_store=False,
    ),
)  # fmt: skip
