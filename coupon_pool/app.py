"""The HTTP API: routes, the request lifecycle and error mapping; all state work is in Store."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio.to_thread
import orjson
from pydantic import BaseModel, ValidationError
from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import errors
from .keys import Keys
from .megadeal import HEARTBEAT_MS
from .models import (
    CODE_PATTERN,
    Allocation,
    AllocationRequest,
    Coupon,
    Redemption,
    RedemptionRequest,
    Stats,
    UploadRequest,
    UploadResult,
)
from .openapi import Operation, openapi_document
from .problems import from_validation_error, problem_response
from .settings import Settings
from .store import Store

log = logging.getLogger("coupon_pool")
Body = TypeVar("Body", bound=BaseModel)
_CODE = re.compile(CODE_PATTERN)
_INLINE_BODY_BYTES = 64 * 1024


def json_response(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


async def parse(request: Request, model: type[Body]) -> Body:
    """Validate a JSON request body against ``model``, or raise the matching CouponError."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise errors.UnsupportedMediaType("send the body as application/json")
    body = await request.body()
    try:
        if len(body) < _INLINE_BODY_BYTES:
            return model.model_validate_json(body)
        # A large upload takes a CPU-second-scale share to validate: in a thread, the event
        # loop keeps serving other requests between the GIL's switch intervals.
        return await anyio.to_thread.run_sync(model.model_validate_json, body)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def upload_coupons(request: Request) -> Response:
    body = await parse(request, UploadRequest)
    return json_response(await store_of(request).upload(body.coupons), 201)


async def allocate(request: Request) -> Response:
    body = await parse(request, AllocationRequest)
    return json_response(await store_of(request).allocate(body.user_id, body.type), 201)


async def redeem(request: Request) -> Response:
    body = await parse(request, RedemptionRequest)
    return json_response(await store_of(request).redeem(body.code, body.user_id, body.type), 201)


async def get_coupon(request: Request) -> Response:
    code = request.path_params["code"]
    if not _CODE.fullmatch(code):
        raise errors.ValidationFailed(
            "code must be 1-64 characters of A-Z a-z 0-9 _ -",
            errors=[{"field": "code", "message": f"String should match pattern '{CODE_PATTERN}'"}],
            error_count=1,
        )
    return json_response(await store_of(request).get_coupon(code))


async def stats(request: Request) -> Response:
    return json_response(await store_of(request).stats())


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    await store_of(request).ping()
    return Response(b'{"status":"ready"}', media_type="application/json")


async def openapi(request: Request) -> Response:
    return Response(request.app.state.openapi, media_type="application/json")


_BODY_ERRORS = (errors.InvalidJson, errors.UnsupportedMediaType, errors.ValidationFailed)
OPERATIONS = (
    Operation(
        "POST",
        "/v1/coupons",
        upload_coupons,
        "Upload up to 50,000 coupons",
        UploadRequest,
        UploadResult,
        201,
        (*_BODY_ERRORS, errors.TooManyCoupons),
    ),
    Operation(
        "GET",
        "/v1/coupons/{code}",
        get_coupon,
        "A coupon with its usage counts",
        None,
        Coupon,
        200,
        (errors.CouponNotFound, errors.ValidationFailed),
    ),
    Operation(
        "POST",
        "/v1/allocations",
        allocate,
        "Allocate an available coupon to a user",
        AllocationRequest,
        Allocation,
        201,
        (*_BODY_ERRORS, errors.PoolEmpty, errors.MegadealBusy),
    ),
    Operation(
        "POST",
        "/v1/redemptions",
        redeem,
        "Record the use of an allocated coupon",
        RedemptionRequest,
        Redemption,
        201,
        (
            *_BODY_ERRORS,
            errors.CouponNotFound,
            errors.CouponExpired,
            errors.TypeMismatch,
            errors.NotAllocated,
            errors.AlreadyRedeemed,
        ),
    ),
    Operation("GET", "/v1/stats", stats, "Counters by coupon type", None, Stats),
    Operation("GET", "/healthz", healthz, "The process is up"),
    Operation("GET", "/readyz", readyz, "Redis answers"),
    Operation("GET", "/openapi.json", openapi, "This document"),
)


async def on_coupon_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.CouponError)
    return problem_response(exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return problem_response(
            errors.MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        )
    if exc.status_code == 404:
        return problem_response(errors.NotFound(f"no route {request.url.path}"))
    error = errors.CouponError(str(exc.detail))
    error.status, error.code, error.title = exc.status_code, "http_error", str(exc.detail)
    return problem_response(error)


async def on_redis_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return problem_response(errors.StoreUnavailable(f"Redis did not answer: {exc}"))
    log.error("Redis error on %s %s: %r", request.method, request.url.path, exc)
    return problem_response(errors.CouponError("the store answered with an error"))


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(errors.CouponError("an unexpected error occurred"))


def connect(settings: Settings, max_connections: int, command_timeout_s: float) -> Redis:
    """A Redis client whose calls fail fast and are never retried (a script may have run)."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections,
        timeout=settings.redis_timeout_s,
        socket_timeout=command_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
    )
    return Redis(connection_pool=pool)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = connect(settings, settings.redis_max_connections, settings.redis_timeout_s)
        # MEGADEAL waiters block on their own connections, so they never starve other requests.
        blocking = connect(
            settings, settings.megadeal.max_waiters, HEARTBEAT_MS / 1000 + settings.redis_timeout_s
        )
        app.state.store = Store(
            redis, Keys(settings.key_namespace), settings.upload_chunk_size, settings.megadeal, blocking
        )
        try:
            await app.state.store.load_scripts()
        except RedisError as exc:
            log.warning("could not load the Lua scripts at start-up (%s); /readyz will say so", exc)
        try:
            yield
        finally:
            await redis.aclose()
            await blocking.aclose()

    app = Starlette(
        routes=[Route(op.path, op.endpoint, methods=[op.method]) for op in OPERATIONS],
        exception_handlers={
            errors.CouponError: on_coupon_error,
            HTTPException: on_http_exception,
            RedisError: on_redis_error,
            Exception: on_unexpected,
        },
        lifespan=lifespan,
    )
    app.state.openapi = orjson.dumps(openapi_document(OPERATIONS))
    return app


app = create_app()
