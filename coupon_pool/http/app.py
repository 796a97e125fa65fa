"""The Starlette app: its routes (from routes.OPERATIONS), middleware, and what its lifespan owns."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import orjson
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..pool.levels import thresholds_of
from ..pool.megadeal import MegadealGate
from ..pool.placement import LayoutMismatch
from ..pool.store import Store
from ..settings import Settings
from . import dashboard
from .auth import ApiKeys
from .background import (
    check_levels_periodically,
    forget_dead_waiters_periodically,
    purge_periodically,
    run_jobs_periodically,
    settle_periodically,
    trim_feeds_periodically,
)
from .bodies import BodyDeadlines
from .delivery import prepare_group, started_by_serve
from .diagnostics import dump_tasks_on_sigusr1, tune_gc
from .inputs import Services
from .metrics import RequestMetrics
from .middleware import JsonLines, RequestTelemetry
from .openapi import openapi_document
from .problems import EXCEPTION_HANDLERS, unexpected
from .routes import OPERATIONS
from .routing import Operation, Shortcuts

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
        gate = services.gate = MegadealGate.from_settings(
            settings, store.redis, store.library, store.ctx.audit_cap
        )
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
        trimming = asyncio.create_task(
            trim_feeds_periodically(store, settings.feed_trim_interval_s, access_log, stop_background)
        )
        # Pool-low events: a check every POOL_LOW_INTERVAL_S while a type has a threshold.
        thresholds = thresholds_of(settings.pool_low)
        levels = asyncio.create_task(
            check_levels_periodically(
                store, thresholds, settings.pool_low_interval_s, access_log, stop_background
            )
        )
        # Webhooks: serve's delivery process delivers (http/delivery.py); the endpoint's group
        # exists before the first request is served, so every operation served is delivered.
        for hook in settings.hooks:
            await prepare_group(store.feeds, hook.name, access_log)
        if settings.hooks and not started_by_serve():
            access_log.write(
                level="warning", event="webhook",
                message="WEBHOOK_URL or WEBHOOK_ENDPOINTS is set, but this app was not started by "
                "`coupon-pool serve`: no process here delivers webhooks (their events wait in the "
                "audit trail for a serve that does)",
            )  # fmt: skip
        try:
            yield
        finally:
            stop_background.set()
            levels.cancel()
            purging.cancel()
            forgetting.cancel()
            settling.cancel()
            sweeping.cancel()
            jobs.cancel()
            trimming.cancel()
            await asyncio.wait(
                {purging, forgetting, settling, jobs, trimming, levels},
                timeout=2 * settings.redis_timeout_s + 1,
            )
            await store.aclose()
            await gate.aclose()
            if app.state.upload_worker:
                await app.state.upload_worker.close()
            access_log.flush()

    operations = routes_of(OPERATIONS, services, api_keys)
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


def routes_of(declared: Sequence[Operation], services: Services, api_keys: ApiKeys) -> list[Route]:
    """A route per path, in the order of the first operation on it; a path with several
    methods (GET and PATCH /v1/batches/{batch}) gets one route that passes each request to
    its method's endpoint, so a 405 names every method the path allows."""
    by_path: dict[str, dict[str, ASGIApp]] = {}
    for op in declared:
        by_path.setdefault(op.path, {})[op.method] = op.endpoint(services, api_keys)
    routes = []
    for path, endpoints in by_path.items():
        if len(endpoints) == 1:
            ((method, endpoint),) = endpoints.items()
            routes.append(Route(path, endpoint, methods=[method]))
        else:
            routes.append(Route(path, _ByMethod(endpoints), methods=list(endpoints)))
    return routes


class _ByMethod:
    """One path's endpoints by method (HEAD is GET's, as Starlette routes it)."""

    def __init__(self, endpoints: dict[str, ASGIApp]) -> None:
        self.endpoints = {**endpoints, **({"HEAD": endpoints["GET"]} if "GET" in endpoints else {})}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.endpoints[scope["method"]](scope, receive, send)
