"""The batch (campaign) routes: list and read batches, change a batch's cap, disable and
enable a batch or one coupon. Declared here and listed in routes.OPERATIONS."""

from __future__ import annotations

from .. import errors
from ..models import BatchesQuery, BatchPatch, BatchPath, CouponPath
from ..results import Batch, BatchPage, CouponState
from .auth import Role
from .inputs import Call
from .routing import Operation


async def list_batches(call: Call, query: BatchesQuery) -> BatchPage:
    """Batches by id, with their counts; page on with `after` = the page's `next`."""
    return await call.store.batches.page(query.limit, query.after)


async def get_batch(call: Call, path: BatchPath) -> Batch:
    """A batch's type, counts, rules, and its generation's progress."""
    return await call.store.batches.get(path.batch)


async def patch_batch(call: Call, path: BatchPath, body: BatchPatch) -> Batch:
    """Set or remove the batch's cap of redemptions. Set for the first time, it counts the
    redemptions made so far; it holds in every slot once this answers."""
    call.note(batch=path.batch, max_redemptions=body.max_redemptions)
    return await call.store.batches.set_rules(path.batch, cap=body.max_redemptions)


async def disable_batch(call: Call, path: BatchPath) -> Batch:
    """From the moment this answers, none of the batch's coupons is allocated, and their
    redemption (and validation) answers 409 coupon_disabled, usages already allocated too.
    The available sets are tidied afterwards in the background (`tidying`)."""
    call.note(batch=path.batch)
    return await call.store.batches.set_rules(path.batch, disabled=True)


async def enable_batch(call: Call, path: BatchPath) -> Batch:
    """The batch's coupons are allocated and redeemed again (those disabled on their own stay
    disabled); those a disable set aside go back to the pool in the background (`tidying`)."""
    call.note(batch=path.batch)
    return await call.store.batches.set_rules(path.batch, disabled=False)


async def disable_coupon(call: Call, path: CouponPath) -> CouponState:
    """From the moment this answers, the coupon is never allocated, and its redemption (and
    validation) answers 409 coupon_disabled, usages already allocated too. A coupon past its
    expiry is refused (410 coupon_expired)."""
    call.note(code=path.code)
    return await call.store.batches.switch(path.code, None, disable=True)


async def enable_coupon(call: Call, path: CouponPath) -> CouponState:
    """The coupon is allocated and redeemed again, unless its batch is disabled."""
    call.note(code=path.code)
    return await call.store.batches.switch(path.code, None, disable=False)


BATCH_OPERATIONS = (
    Operation(
        method="GET", path="/v1/batches", handler=list_batches, tag="batches",
        summary="Batches, by id", role=Role.ADMIN, query=BatchesQuery, response=BatchPage,
    ),
    Operation(
        method="GET", path="/v1/batches/{batch}", handler=get_batch, tag="batches",
        summary="A batch: counts, rules, generation", role=Role.ADMIN, path_params=BatchPath, response=Batch,
        errors=(errors.BatchNotFound,),
    ),
    Operation(
        method="PATCH", path="/v1/batches/{batch}", handler=patch_batch, tag="batches",
        summary="Change a batch's cap of redemptions", role=Role.ADMIN, path_params=BatchPath,
        body=BatchPatch, response=Batch, errors=(errors.BatchNotFound,),
    ),
    Operation(
        method="POST", path="/v1/batches/{batch}/disable", handler=disable_batch, tag="batches",
        summary="Disable a batch", role=Role.ADMIN, path_params=BatchPath, response=Batch,
        errors=(errors.BatchNotFound,),
    ),
    Operation(
        method="POST", path="/v1/batches/{batch}/enable", handler=enable_batch, tag="batches",
        summary="Enable a batch again", role=Role.ADMIN, path_params=BatchPath, response=Batch,
        errors=(errors.BatchNotFound,),
    ),
    Operation(
        method="POST", path="/v1/coupons/{code}/disable", handler=disable_coupon, tag="batches",
        summary="Disable one coupon", role=Role.ADMIN, path_params=CouponPath, response=CouponState,
        errors=(errors.CouponNotFound, errors.CouponExpired),
    ),
    Operation(
        method="POST", path="/v1/coupons/{code}/enable", handler=enable_coupon, tag="batches",
        summary="Enable one coupon again", role=Role.ADMIN, path_params=CouponPath, response=CouponState,
        errors=(errors.CouponNotFound,),
    ),
)  # fmt: skip
