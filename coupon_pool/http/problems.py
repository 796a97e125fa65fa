"""Errors as RFC 9457 application/problem+json: the exception handlers, and the one 422 builder."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from redis.exceptions import (
    AskError,
    ClusterError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .. import errors
from ..models import UNION_TAGS
from ..pool.connection import NotReplicated
from .middleware import note

MAX_LISTED_ERRORS = 100
MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("coupon_pool")


def problem_body(error: errors.CouponError) -> bytes:
    """The problem document of ``error``, as JSON."""
    return orjson.dumps({
        "type": f"urn:coupon-pool:problem:{error.code}",
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
        **error.extra,
    })  # fmt: skip


def problem_response(error: errors.CouponError) -> Response:
    return Response(
        problem_body(error), status_code=error.status, headers=error.headers, media_type=MEDIA_TYPE
    )


def from_validation_error(exc: ValidationError, model: type[BaseModel]) -> errors.CouponError:
    """The CouponError for input ``model`` refused: 400, 413 or 422 with the bad fields listed.

    A model's ``error_codes`` maps a field (its location) and a pydantic error type there to
    the error it stands for (an upload's list of coupons too long: 413 too_many_coupons; a
    coupon's metadata with too many keys stays a 422).
    """
    found = exc.errors(include_url=False, include_context=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in found):
        return errors.InvalidJson(f"the body is not valid JSON: {found[0]['msg']}")
    own_codes: dict[tuple[tuple[int | str, ...], str], str] = getattr(model, "error_codes", {})
    for e in found:
        if (own := own_codes.get((tuple(e["loc"]), e["type"]))) is not None:
            return errors.BY_CODE[own](e["msg"])
    return invalid_fields([field_error(e["loc"], e["msg"]) for e in found[:MAX_LISTED_ERRORS]], len(found))


def invalid_fields(listed: list[dict[str, Any]], count: int) -> errors.ValidationFailed:
    """The 422 for ``count`` invalid fields, of which ``listed`` (made by field_error) are shown."""
    first = listed[0]
    where = f"item {first['index']}, " if "index" in first else ""
    return errors.ValidationFailed(
        f"{count} invalid field(s); first: {where}{first['field']}: {first['message']}",
        errors=listed,
        error_count=count,
    )


def field_error(loc: tuple[int | str, ...], message: str) -> dict[str, Any]:
    """One listed error: ``index`` when the field is inside an item of a list (an upload's
    coupons), and the field's dotted path within the body (or within that item)."""
    error: dict[str, Any] = {}
    if len(loc) >= 2 and isinstance(loc[1], int):
        error["index"] = loc[1]
        loc = loc[2:]
    # A discriminated union puts the tag ("flat", "percent") into the location: leave it out.
    parts = [str(p) for i, p in enumerate(loc) if not (i > 0 and p in UNION_TAGS)]
    error["field"] = ".".join(parts) or "(body)"
    error["message"] = message
    return error


async def on_coupon_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.CouponError)
    note(request, error=exc.code)
    return problem_response(exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: errors.CouponError
    if exc.status_code == 405:
        headers = dict(exc.headers or {})
        if "Allow" in headers:  # Starlette joins a set: its order would change with the hash seed
            headers["Allow"] = ", ".join(sorted(headers["Allow"].split(", ")))
        error = errors.MethodNotAllowed(
            f"{request.method} is not allowed on {request.url.path}", headers=headers
        )
    elif exc.status_code == 404:
        error = errors.NotFound(f"no route {request.url.path}")
    else:
        error = errors.CouponError(str(exc.detail))
        error.status, error.code, error.title = exc.status_code, "http_error", str(exc.detail)
    return await on_coupon_error(request, error)


# A cluster's answers while a master fails over or a slot moves, once the retries are spent
# (ClusterError: ClusterDownError, MasterDownError; AskError: MovedError; TRYAGAIN is a
# ResponseError redis-py names TryAgainError): the call did not run.
_CLUSTER_BUSY = (ClusterError, AskError, ReadOnlyError, TryAgainError, RedisClusterException)


async def on_redis_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return await on_coupon_error(request, errors.StoreUnavailable(f"Redis did not answer: {exc}"))
    if isinstance(exc, NotReplicated):
        detail = f"{exc}; send the request again with the same Idempotency-Key to learn its outcome"
        return await on_coupon_error(request, errors.StoreUnavailable(detail))
    if isinstance(exc, _CLUSTER_BUSY):
        busy = errors.StoreUnavailable(
            f"the Redis Cluster did not run the call (failover or resharding): {exc}"
        )
        return await on_coupon_error(request, busy)
    if isinstance(exc, OutOfMemoryError):  # refused whole: a script over maxmemory does not start
        full = errors.StoreFull("Redis is at its maxmemory and refuses writes; nothing was changed")
        return await on_coupon_error(request, full)
    log.error("Redis error on %s %s: %r", request.method, request.url.path, exc)
    return await on_coupon_error(request, errors.CouponError("the store answered with an error"))


def unexpected(exc: Exception) -> Response:
    """The answer to an exception nothing else handled (RequestTelemetry logs it)."""
    return problem_response(errors.CouponError("an unexpected error occurred"))


EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    errors.CouponError: on_coupon_error,
    HTTPException: on_http_exception,
    RedisError: on_redis_error,
    RedisClusterException: on_redis_error,
}


def handler_for(exc: Exception) -> Callable[[Request, Exception], Awaitable[Response]] | None:
    """The EXCEPTION_HANDLERS entry for ``exc``, by its class's ancestry, as Starlette's
    exception middleware picks it; None for an exception none of them answers."""
    for cls in type(exc).__mro__:
        if cls in EXCEPTION_HANDLERS:
            return EXCEPTION_HANDLERS[cls]
    return None
