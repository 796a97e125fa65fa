"""Redis clients for the service: fail fast, never retry, and hand out connections fairly."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from .settings import Settings


class FairConnectionPool(ConnectionPool):
    """At most ``max_connections``, handed out first come, first served.

    redis-py's BlockingConnectionPool lets a newcomer take a released connection ahead of
    those already waiting, so under sustained load some requests wait for seconds; here a
    FIFO semaphore orders the waiters, and none waits longer than ``wait_timeout``.
    """

    def __init__(self, *, wait_timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wait_timeout = wait_timeout
        self._free = asyncio.Semaphore(self.max_connections)
        # The connections handed out, each holding one permit of ``_free``. redis-py's own
        # get_connection releases a connection it failed to set up (calling release()
        # before we hold it): only connections in here give a permit back.
        self._permitted: set[AbstractConnection] = set()

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        if self._free.locked():
            try:
                async with asyncio.timeout(self.wait_timeout):
                    await self._free.acquire()
            except TimeoutError:
                raise RedisConnectionError(
                    f"no Redis connection came free within {self.wait_timeout} s "
                    f"(all {self.max_connections} busy)"
                ) from None
        else:
            await self._free.acquire()
        try:
            connection: AbstractConnection = await super().get_connection()  # type: ignore[no-untyped-call]
        except BaseException:
            self._free.release()
            raise
        self._permitted.add(connection)
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        try:
            await super().release(connection)
        finally:
            if connection in self._permitted:
                self._permitted.remove(connection)
                self._free.release()


PROCESS_PREFIX = "coupon-pool:"
_process_name = ""


def process_name() -> str:
    """This process's name on every Redis connection it opens (CLIENT LIST shows it)."""
    return _process_name


def _rename() -> None:
    global _process_name
    _process_name = f"{PROCESS_PREFIX}{uuid.uuid4().hex[:16]}"


_rename()
os.register_at_fork(after_in_child=_rename)


def connect(settings: Settings, max_connections: int, command_timeout_s: float) -> Redis:
    """A Redis client whose calls fail fast and are never retried (a script may have run).

    Its connections carry this process's name: the MEGADEAL gate tells live processes
    from dead ones by their open connections.
    """
    pool = FairConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections,
        wait_timeout=settings.redis_timeout_s,
        socket_timeout=command_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
        client_name=_process_name,
    )
    return Redis(connection_pool=pool)
