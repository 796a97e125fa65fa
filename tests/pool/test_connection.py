"""The fair connection pool: waiters served in order, and a bounded wait with a clear error."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from coupon_pool.pool.connection import FairConnectionPool
from support.redis_server import RedisServer

BUSY_LUA = "local x = 0 for i = 1, 20000 do x = x + i end return x"  # about half a millisecond


async def test_no_request_starves_while_connections_turn_over(redis_server: RedisServer) -> None:
    # redis-py's BlockingConnectionPool fails hundreds of these calls with a timeout.
    pool = FairConnectionPool.from_url(redis_server.url, max_connections=4, wait_timeout=0.5)
    redis = Redis(connection_pool=pool)
    failures: list[BaseException] = []

    async def caller() -> None:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                await redis.eval(BUSY_LUA, 0)
            except RedisConnectionError as exc:
                failures.append(exc)

    await asyncio.gather(*(caller() for _ in range(100)))
    await redis.aclose()
    assert failures == []


async def test_a_wait_past_the_timeout_is_a_connection_error(redis_server: RedisServer) -> None:
    pool = FairConnectionPool.from_url(redis_server.url, max_connections=2, wait_timeout=0.2)
    held = [await pool.get_connection() for _ in range(2)]
    started = time.monotonic()
    with pytest.raises(RedisConnectionError, match=r"no Redis connection came free within 0\.2 s"):
        await pool.get_connection()
    assert 0.2 <= time.monotonic() - started < 0.5
    await pool.release(held[0])
    connection = await pool.get_connection()  # a released connection is handed out again
    for c in (connection, held[1]):
        await pool.release(c)
    await pool.disconnect()


async def test_a_connection_that_fails_to_set_up_gives_back_exactly_one_place(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py releases a connection it could not set up; the place must not come back twice."""
    pool = FairConnectionPool.from_url(redis_server.url, max_connections=2, wait_timeout=0.2)
    failing = 3

    async def flaky_setup(connection: object) -> None:
        nonlocal failing
        if failing:
            failing -= 1
            raise RedisConnectionError("handshake timed out")

    monkeypatch.setattr(pool, "ensure_connection", flaky_setup)
    for _ in range(3):
        with pytest.raises(RedisConnectionError, match="handshake"):
            await pool.get_connection()

    held = [await pool.get_connection() for _ in range(2)]
    with pytest.raises(RedisConnectionError, match="no Redis connection came free"):
        await pool.get_connection()  # still only 2 places, not 2 + one per failure
    for connection in held:
        await pool.release(connection)
    await pool.disconnect()
