"""Fixtures: real redis-server processes started by the suite, the app, and a live server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import fakeredis
import httpx
import pytest
from cluster import Cluster
from redis import Redis as SyncRedis
from redis.asyncio import Redis, RedisCluster

from coupon_pool.http.app import create_app
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from coupon_pool.settings import Settings

REPO = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"gave up waiting for {check}")


class RedisServer:
    """A redis-server process with the project's redis.conf, on a free port and its own dir."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not on PATH: run `make test`, which installs it")
        self.data_dir = data_dir
        self.port = free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [REDIS_SERVER, str(REPO / "redis.conf"), "--port", str(self.port),
             "--dir", str(self.data_dir), "--logfile", str(self.data_dir / "redis.log"), *self.extra],
        )  # fmt: skip
        client = SyncRedis(port=self.port)
        wait_until(client.ping)
        client.close()
        return self

    def stop(self) -> None:
        """A clean shutdown: Redis flushes and fsyncs the append-only file first."""
        if self.process and self.process.poll() is None:
            with SyncRedis(port=self.port) as client, contextlib.suppress(Exception):
                client.shutdown(nosave=True)
            self.process.wait(10)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)


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


CLUSTER_SHARDS = 16


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real Redis Cluster: three masters and three replicas (tests/cluster.py)."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


def cluster_client(cluster: Cluster) -> Redis:
    """A client of the cluster, typed as the service types it (connection.connect)."""
    return cast(Redis, RedisCluster.from_url(cluster.url, decode_responses=True))


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


class LiveServer:
    """``coupon-pool serve`` in a subprocess: real HTTP, real uvicorn."""

    def __init__(self, redis_url: str, log: Path | None = None, **env: str) -> None:
        """``log``: a file for the server's stdout (its JSON log lines); else they are dropped."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # No periodic purge unless a test asks for one: a session-long server purging every
        # minute would add keys and script calls under other tests' feet.
        environ = {**os.environ, "REDIS_URL": redis_url, "PORT": str(self.port),
                   "LOG_LEVEL": "warning", "PURGE_INTERVAL_S": "3600", **env}  # fmt: skip
        with open(log or os.devnull, "wb") as stdout:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "coupon_pool", "serve"], env=environ, stdout=stdout
            )
        wait_until(lambda: httpx.get(f"{self.url}/healthz").status_code == 200, timeout=20)

    def stop(self) -> None:
        """SIGTERM, as a deployment stops it; a server that does not exit in 30 s fails the test."""
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGUSR1)  # its asyncio tasks' stacks, to stderr
            time.sleep(1)
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"coupon-pool serve on port {self.port} ignored SIGTERM for 30 s") from None


@pytest.fixture(scope="session")
def live_server(redis_server: RedisServer) -> Iterator[LiveServer]:
    server = LiveServer(redis_server.url)
    yield server
    server.stop()
