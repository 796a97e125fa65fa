"""Fixtures of the API tests that need the app with its background loops quiet."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from coupon_pool.http.app import create_app
from coupon_pool.pool.keys import Layout
from coupon_pool.settings import Settings
from support.cluster import CLUSTER_SHARDS, cluster_client
from support.redis_server import RedisServer


@asynccontextmanager
async def app_on(
    request: pytest.FixtureRequest, redis_server: RedisServer, **given: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Redis, Settings]]:
    """The app in-process with settings ``given``, on a flushed Redis (``request.param``:
    "redis-server", or "cluster" for the suite's cluster and a sharded pool), and a client of it."""
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        settings = Settings(redis_url=cluster.url, redis_cluster=True, pool_shards=CLUSTER_SHARDS, **given)
        redis = cluster_client(cluster)
    else:
        with SyncRedis.from_url(redis_server.url) as flushing:
            flushing.flushall()
        settings = Settings(redis_url=redis_server.url, **given)
        redis = Redis.from_url(redis_server.url, decode_responses=True)
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        yield http, redis, settings
    await redis.aclose()


@pytest.fixture(params=["redis-server", "cluster"])
async def pool(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[tuple[httpx.AsyncClient, Redis, Layout]]:
    """The app in-process with no sweep and no periodic purge, and a client of its Redis."""
    quiet: dict[str, Any] = {
        "settle_interval_s": 0,
        "purge_interval_s": 86_400,
        "failed_lookup_burst": 100_000,
    }
    async with app_on(request, redis_server, **quiet) as (http, redis, settings):
        yield http, redis, Layout(settings.key_namespace, settings.pool_shards)
