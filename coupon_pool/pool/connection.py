"""Redis clients for the service: fail fast, retry only what is safe, hand out connections fairly.

A call is retried once, on a fresh connection, only when it provably never reached Redis
(the connection was found closed before it was sent, or the write failed: ``NotSent``),
or when it carries an Idempotency-Key (its script replays the first answer if it ran).
"""

from __future__ import annotations

import asyncio
import os
import select
import uuid
from typing import Any, cast

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from ..settings import Settings


class NotSent(RedisConnectionError):
    """The command never reached Redis: writing it failed."""


class NotReplicated(RedisError):
    """A change was made on the master, but fewer replicas than REDIS_WAIT_REPLICAS had it in time."""


class CheckedConnection(Connection):
    """A connection that tells a failed write (NotSent) from a failure after it."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except (RedisConnectionError, OSError) as exc:
            raise NotSent(f"not sent: {exc}") from exc


def closed_by_peer(connection: AbstractConnection) -> bool:
    """Whether Redis closed this idle connection: its socket reads as ready (an idle
    connection has nothing to read but the end of the stream), or it has no socket."""
    writer = getattr(connection, "_writer", None)
    if writer is None:
        return False
    sock = writer.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return True
    poll = select.poll()
    poll.register(sock.fileno(), select.POLLIN)
    return bool(poll.poll(0))


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

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        # redis-py asks the stream whether a pooled connection was closed; the stream knows
        # only once the event loop has read the end of it, which after a Redis restart is
        # often not yet. The kernel knows: ask the socket, and reconnect before sending.
        if closed_by_peer(connection):
            await connection.disconnect()
        await super().ensure_connection(connection)

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
    from dead ones by their open connections. With REDIS_CLUSTER, a RedisCluster (typed
    as Redis: the calls the service makes have the same signatures on both), which
    follows MOVED and ASK itself and reloads the slot map after a connection fails.
    """
    if settings.redis_cluster:
        cluster = RedisCluster.from_url(
            settings.redis_url,
            max_connections=max_connections,  # per node
            socket_timeout=command_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),  # a call that may have run is never sent again
            client_name=_process_name,
        )
        return cast(Redis, cluster)
    pool = FairConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections,
        wait_timeout=settings.redis_timeout_s,
        socket_timeout=command_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
        client_name=_process_name,
        connection_class=CheckedConnection,
    )
    return Redis(connection_pool=pool)
