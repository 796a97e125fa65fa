"""Fixtures: real redis-server processes started by the suite, the app, and a live server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import fakeredis
import httpx
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from coupon_pool.http.app import create_app
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from coupon_pool.settings import Settings
from support.cluster import CLUSTER_SHARDS, Cluster, cluster_client
from support.live_server import LiveServer
from support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real Redis Cluster: three masters and three replicas (support/cluster.py)."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
async def sharded(redis_cluster: Cluster) -> AsyncIterator[Store]:
    """A pool in CLUSTER_SHARDS shards on the real Redis Cluster, uploading 50 coupons a call."""
    redis_cluster.flush()
    client = cluster_client(redis_cluster)
    store = Store(client, Keys("cp"), shards=CLUSTER_SHARDS, upload_chunk_size=50)
    await store.prepare()
    yield store
    await client.aclose()


@pytest.fixture(params=["redis-server", "fakeredis", "cluster"])
async def store(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Store]:
    """The store on a real Redis, again on fakeredis (which runs the Lua through lupa), and
    on a real Redis Cluster with the pool in CLUSTER_SHARDS shards."""
    shards = 1
    if request.param == "redis-server":
        client: Redis = Redis.from_url(redis_server.url, decode_responses=True)
        await client.flushall()
    elif request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        client = cluster_client(cluster)
    else:
        client = fakeredis.FakeAsyncRedis(decode_responses=True)
    # fakeredis has no INFO: no memory share of the uploads' own there (real Redis checks it).
    share = 1.0 if request.param == "fakeredis" else 0.9
    store = Store(client, Keys("cp"), shards=shards, upload_chunk_size=100, upload_memory_share=share)
    await store.prepare()
    yield store
    await client.aclose()


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return Settings(redis_url=redis_server.url)


# The fixtures a test may use to look at Redis directly: its API tests then run on the
# single Redis only (they read the layout of one slot).
_SINGLE_REDIS_FIXTURES = {"redis", "settings", "store"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "one_slot: an API test whose assertions hold for a pool in one slot only "
        "(sharded pools have tests of their own in test_cluster.py)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that uses only the API (``client``) runs against the single Redis and again
    against the cluster, with the pool in CLUSTER_SHARDS shards."""
    if "client" in metafunc.fixturenames:
        on_cluster = not _SINGLE_REDIS_FIXTURES & set(metafunc.fixturenames)
        on_cluster = on_cluster and metafunc.definition.get_closest_marker("one_slot") is None
        metafunc.parametrize(
            "client", ["redis-server", "cluster"] if on_cluster else ["redis-server"], indirect=True
        )


@pytest.fixture
async def client(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process, with its lifespan run, on a flushed real Redis (or Redis Cluster)."""
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        settings = Settings(redis_url=cluster.url, redis_cluster=True, pool_shards=CLUSTER_SHARDS)
    else:
        with SyncRedis.from_url(redis_server.url) as flushing:
            flushing.flushall()
        settings = Settings(redis_url=redis_server.url)
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        yield http


@pytest.fixture(scope="session")
def live_server(redis_server: RedisServer) -> Iterator[LiveServer]:
    server = LiveServer(redis_server.url)
    yield server
    server.stop()
