"""How a MEGADEAL waiter waits: blocked on its wake list until a leave wakes it, or a pause
ends, whichever comes first; and no longer than its caller is there."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from contextlib import suppress
from typing import Any, cast

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

# What a wait's connection to one node of a cluster takes from the cluster client's.
_NODE_CONNECTION = ("username", "password", "socket_timeout", "socket_connect_timeout", "decode_responses",
                    "client_name", "encoding", "encoding_errors", "health_check_interval")  # fmt: skip


class Wakeups:
    """Waits on wake lists (BLPOP) over ``blocking_redis``, a client of their own.

    On a cluster a wait blocks on a connection of its own to the master of the gate's slot
    (the slot of ``slot_key``): redis-py's cluster client, when one blocked call times out,
    disconnects the node's other connections under the calls still on them. If that master
    has changed (MOVED, a failover) the wait ends at once: the waiter asks the gate again,
    through the cluster client, and the next wait finds the new master.
    """

    def __init__(self, blocking_redis: Redis, slot_key: str, max_waiters: int) -> None:
        self.blocking_redis = blocking_redis
        self.slot_key = slot_key
        self.max_waiters = max_waiters
        self._node: tuple[str, Redis] | None = None  # on a cluster: the waits' client

    async def wait(self, key: str, seconds: float) -> None:
        """Until something is pushed to list ``key``, or ``seconds`` have passed."""
        if not isinstance(self.blocking_redis, RedisCluster):
            await self.blocking_redis.blpop([key], timeout=seconds)
            return
        try:
            await (await self._node_client()).blpop([key], timeout=seconds)
        except (RedisError, RedisClusterException):
            await self.aclose()

    async def _node_client(self) -> Redis:
        cluster = cast(RedisCluster, self.blocking_redis)
        await cluster.initialize()
        node = cluster.get_node_from_key(self.slot_key)
        if node is None:
            raise RedisClusterException("no node serves the gate's slot")
        if self._node is None or self._node[0] != node.name:
            await self.aclose()
            given = cluster.get_connection_kwargs()
            kwargs: dict[str, Any] = {k: given[k] for k in _NODE_CONNECTION if given.get(k) is not None}
            pool = ConnectionPool(host=node.host, port=node.port, max_connections=self.max_waiters, **kwargs)
            self._node = (node.name, Redis(connection_pool=pool))
        return self._node[1]

    async def aclose(self) -> None:
        """Close the node client of the waits (on a cluster); the next wait makes another."""
        if self._node is not None:
            client, self._node = self._node[1], None
            with suppress(RedisError):
                await client.aclose()


async def pause_unless_gone(pause: Awaitable[Any], watch: asyncio.Future[Any] | None) -> None:
    """Wait for ``pause``, or less if the caller goes away (``watch`` completes)."""
    if watch is None:
        await pause
        return
    waiting = asyncio.ensure_future(pause)
    await asyncio.wait({waiting, watch}, return_when=asyncio.FIRST_COMPLETED)
    if not waiting.done():
        waiting.cancel()
        with suppress(asyncio.CancelledError, RedisError):
            await waiting
