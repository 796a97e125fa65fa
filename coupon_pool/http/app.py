"""The Starlette app: its routes (from routes.OPERATIONS), middleware, and what its lifespan owns."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from ..pool.megadeal import MegadealGate
from ..pool.placement import LayoutMismatch
from ..pool.store import Store
from ..settings import Settings
from . import dashboard
from .auth import ApiKeys
from .background import (
    forget_dead_waiters_periodically,
    purge_periodically,
    run_jobs_periodically,
    settle_periodically,
)
from .bodies import BodyDeadlines
from .diagnostics import dump_tasks_on_sigusr1, tune_gc
from .inputs import Services
from .metrics import RequestMetrics
from .middleware import JsonLines, RequestTelemetry
from .openapi import openapi_document
from .problems import EXCEPTION_HANDLERS, unexpected
from .routes import OPERATIONS
from .routing import Shortcuts

log = logging.getLogger("coupon_pool")


def create_app(settings: Settings | None = None) -> Starlette:
    """The service; uvicorn builds it with the settings of the environment (a factory)."""
    settings = settings or Settings.from_env()
    access_log = JsonLines()
    api_keys = ApiKeys(settings.admin_keys, settings.client_keys)
    request_metrics = RequestMetrics()
    services = Services(
        max_uploads=settings.max_uploads,
        max_body_bytes=settings.max_body_bytes,
        idempotency_ttl_ms=settings.idempotency_ttl_s * 1000,
        deadlines=BodyDeadlines(settings.body_timeout_s),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # One Redis client and one function library (with its auto-pipeline) for the process,
        # shared by the store and the MEGADEAL gate.
        store = services.store = Store.from_settings(settings)
        gate = services.gate = MegadealGate.from_settings(settings, store.redis, store.library)
        try:
            await store.prepare()
        except RedisError as exc:
            log.warning("could not load the function library at start-up (%s); /readyz will say so", exc)
        except LayoutMismatch as exc:  # serving would look for coupons in the wrong shards
            access_log.write(level="error", event="layout_mismatch", message=str(exc))
            await gate.aclose()
            await store.aclose()
            raise
        if not api_keys.enabled:
            access_log.write(
                level="warning",
                event="auth_disabled",
                message="no API keys configured (COUPON_POOL_ADMIN_KEYS, COUPON_POOL_CLIENT_KEYS): "
                "EVERY ROUTE IS OPEN TO ANYONE WHO CAN REACH THIS PORT. Set keys outside local development.",
            )
            log.warning("no API keys configured: every route is open (local development only)")
        dump_tasks_on_sigusr1()
        tune_gc()
        sweeping = asyncio.create_task(services.deadlines.sweep())
        stop_background = asyncio.Event()
        purging = asyncio.create_task(
            purge_periodically(store, settings.purge_interval_s, access_log, stop_background)
        )
        forgetting = asyncio.create_task(forget_dead_waiters_periodically(gate, stop_background))
        settling = asyncio.create_task(
            settle_periodically(store, settings.settle_interval_s, access_log, stop_background)
        )
        jobs = asyncio.create_task(
            run_jobs_periodically(store, settings.jobs_interval_s, access_log, stop_background)
        )
        try:
            yield
        finally:
            stop_background.set()
            purging.cancel()
            forgetting.cancel()
            settling.cancel()
            sweeping.cancel()
            jobs.cancel()
            await asyncio.wait(
                {purging, forgetting, settling, jobs}, timeout=2 * settings.redis_timeout_s + 1
            )
            await store.aclose()
            await gate.aclose()
            if app.state.upload_worker:
                await app.state.upload_worker.close()
            access_log.flush()

    operations = [Route(op.path, op.endpoint(services, api_keys), methods=[op.method]) for op in OPERATIONS]
    app = Starlette(
        routes=[*operations, *dashboard.routes(keys_required=api_keys.enabled)],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[
            Middleware(RequestTelemetry, metrics=request_metrics, log=access_log, on_error=unexpected),
            Middleware(Shortcuts, routes=operations),
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = request_metrics
    app.state.upload_worker = None
    app.state.openapi = orjson.dumps(openapi_document(OPERATIONS))
    return app
