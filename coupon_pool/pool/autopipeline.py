"""Auto-pipelining: the function calls made in one event-loop turn go to Redis together.

Under load many requests reach their script call in the same turn of the event loop.
Sent one by one, each takes a pooled connection, a write, a read and two timers, and
Redis answers each with a read and a write of its own. Queued for the rest of the turn
and sent as one pipeline (not a transaction: each script is still atomic on its own),
they share one connection, one write and one read, on both sides. A lone call waits for
nothing but the end of the turn it was made in. A call answered "Function not found" (a
Redis that lost the library) did not run: the library is loaded again and the call sent
once more.

When the connection fails, a pipeline that was never sent (connection.NotSent) is sent
once more on a fresh connection; otherwise only its calls that carry an Idempotency-Key
are (their scripts replay the first answer if they ran), and the others fail.

On a Redis Cluster the calls of a turn go out as one pipeline per node (the master of
each call's slot, from the client's slot map). A call the cluster did not run (MOVED,
ASK, TRYAGAIN during a slot's migration, CLUSTERDOWN or READONLY during a failover) is
sent again, to where the cluster now says, until ``retry_for_s`` has passed. With
``wait_replicas``, each pipeline ends with a WAIT on the same
connection; calls whose changes did not reach that many replicas in time fail with
NotReplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connection import NotReplicated, NotSent
from .protocol import NOT_RUN, Call, not_found, pack

MAX_BATCH = 128  # calls per pipeline: a bigger turn is split over several connections


class AutoPipeline:
    """Runs functions (FCALL) for many concurrent callers, a pipeline per event-loop turn (and node)."""

    def __init__(
        self,
        redis: Redis,
        max_batch: int = MAX_BATCH,
        *,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        retry_for_s: float = 2.0,
        keys_of: Callable[[Sequence[str | bytes]], Sequence[str | bytes]] | None = None,
        reload: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``keys_of``: what a call's keys become before they are sent (library.guarded);
        ``reload``: loads the function library again, after "Function not found"."""
        self.redis = redis
        self.keys_of = keys_of
        self.reload = reload
        self.cluster: RedisCluster | None = redis if isinstance(redis, RedisCluster) else None
        self.max_batch = max_batch
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.retry_for_s = retry_for_s
        self._queued: list[Call] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._refreshing: asyncio.Task[None] | None = None
        self._reloading: asyncio.Future[None] | None = None
        self._wait = b"*3\r\n$4\r\nWAIT\r\n$%d\r\n%d\r\n$%d\r\n%d\r\n" % (
            len(str(wait_replicas)),
            wait_replicas,
            len(str(wait_timeout_ms)),
            wait_timeout_ms,
        )

    async def run(
        self,
        function: bytes,
        keys: Sequence[str | bytes],
        args: Sequence[Any],
        idempotent: bool = False,
        retry_for_s: float | None = None,
    ) -> Any:
        """The function's reply, or the error Redis or the connection gave for it.

        ``keys[0]`` names the call's slot (on a cluster). ``idempotent``: running it twice
        has the effect of once (it carries an Idempotency-Key), so it may be sent again
        after a connection failure. ``retry_for_s``: how long a call the cluster did not run
        is sent again (default: the pipeline's); a MOVED is always followed.
        """
        if self.keys_of is not None:
            keys = self.keys_of(keys)
        if self.cluster is None:
            return await self._queue(function, keys, args, idempotent)
        deadline = time.monotonic() + (self.retry_for_s if retry_for_s is None else retry_for_s)
        pause, moved = 0.01, 0
        while True:
            try:
                return await self._queue(function, keys, args, idempotent)
            except NOT_RUN as exc:  # the cluster did not run it: send it again, where it now says
                if isinstance(exc, MovedError) and moved < 5:
                    moved += 1
                    await self.cluster.nodes_manager.move_slot(exc)
                    continue
                if time.monotonic() + pause > deadline:
                    raise
                if isinstance(exc, ClusterDownError | ReadOnlyError):
                    self.refresh()
                await asyncio.sleep(pause)
                pause = min(2 * pause, 0.2)

    def _queue(
        self, function: bytes, keys: Sequence[str | bytes], args: Sequence[Any], idempotent: bool
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        self._queued.append((function, keys, args, idempotent, reply))
        if len(self._queued) == 1:
            loop.call_soon(self._flush)
        return reply

    async def _reload_once(self) -> None:
        """Load the library again; the calls that all found it missing share one load."""
        assert self.reload is not None
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.ensure_future(self.reload())
        await asyncio.shield(self._reloading)

    def refresh(self) -> None:
        """Reload the cluster's slot map, in the background, once at a time."""
        if self.cluster is not None and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self._reload_slots())

    async def _reload_slots(self) -> None:
        assert self.cluster is not None
        with contextlib.suppress(RedisError, RedisClusterException):  # the next failure asks again
            await self.cluster.nodes_manager.initialize()

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        if self.cluster is None:
            for start in range(0, len(queued), self.max_batch):
                self._spawn(self._send(None, queued[start : start + self.max_batch]))
        else:
            self._spawn(self._dispatch(queued))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._sending.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._sending.discard)

    async def _dispatch(self, calls: list[Call], retry: bool = True) -> None:
        """Send the calls to the masters of their slots, a pipeline per node."""
        assert self.cluster is not None
        try:
            if self._refreshing is not None and not self._refreshing.done():
                await asyncio.shield(self._refreshing)
            manager = self.cluster.nodes_manager
            if not manager.slots_cache:
                await self.cluster.initialize()
            groups: dict[str, tuple[ClusterNode, list[Call]]] = {}
            for call in calls:
                key = call[1][0]
                node = manager.get_node_from_slot(key_slot(key if isinstance(key, bytes) else key.encode()))
                groups.setdefault(node.name, (node, []))[1].append(call)
        except (RedisError, RedisClusterException) as exc:  # nothing was sent
            self.refresh()
            for *_, reply in calls:
                if not reply.done():
                    reply.set_exception(ClusterDownError(f"no slot map: {exc}"))
            return
        sends = [
            self._send(node, node_calls[start : start + self.max_batch], retry)
            for node, node_calls in groups.values()
            for start in range(0, len(node_calls), self.max_batch)
        ]
        await asyncio.gather(*sends)

    async def _send(self, node: ClusterNode | None, calls: list[Call], retry: bool = True) -> None:
        calls = [call for call in calls if not call[4].done()]  # a caller cancelled in this turn
        try:
            if calls:
                await self._answer(node, calls, retry)
        finally:  # whatever happened, no caller waits forever
            for *_, reply in calls:
                if not reply.done():
                    reply.set_exception(RedisError("the pipeline ended without this call's reply"))

    async def _exchange(self, node: ClusterNode | None, calls: list[Call]) -> list[Any]:
        """Send the calls as one write on one pooled connection; their replies, errors included."""
        if node is None:
            pool = self.redis.connection_pool
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        else:
            try:
                connection = node.acquire_connection()
            except MaxConnectionsError as exc:
                raise NotSent(f"all connections to {node.name} are busy") from exc
        try:
            packed = pack(calls)
            if self.wait_replicas:
                packed += self._wait
            if node is None:
                await connection.send_packed_command(packed, False)
            else:  # RedisCluster makes its own connections, not connection.CheckedConnection
                try:
                    await node.disconnect_if_needed(connection)
                    await connection.send_packed_command(packed, False)
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    raise NotSent(f"not sent to {node.name}: {exc}") from exc
            replies: list[Any] = []
            for _ in calls:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as error:  # the function's own error: its caller's alone
                    replies.append(error)
            if self.wait_replicas:
                try:
                    acknowledged = int(await connection.read_response())
                except ResponseError:  # a master turned replica in a failover refuses WAIT:
                    acknowledged = 0  # nothing is confirmed, and each call keeps its own reply
                self._check_replicated(replies, acknowledged)
            return replies
        except BaseException:
            await connection.disconnect()  # replies may still be on their way: never reuse it
            raise
        finally:
            if node is None:
                await pool.release(connection)
            else:
                node.release(connection)

    def _check_replicated(self, replies: list[Any], acknowledged: int) -> None:
        if acknowledged >= self.wait_replicas:
            return
        for i, reply in enumerate(replies):
            if not isinstance(reply, Exception):
                replies[i] = NotReplicated(
                    f"the change was made, but {acknowledged} of the {self.wait_replicas} replicas "
                    f"asked for (REDIS_WAIT_REPLICAS) had it within {self.wait_timeout_ms} ms: a "
                    f"failover now could lose it"
                )

    async def _answer(self, node: ClusterNode | None, calls: list[Call], retry: bool = True) -> None:
        try:
            replies = await self._exchange(node, calls)
        except Exception as exc:  # the connection failed or timed out: every call shares it
            again = []
            if retry and isinstance(exc, NotSent):
                again = calls
            elif retry and isinstance(exc, RedisConnectionError | RedisTimeoutError):
                again = [call for call in calls if call[3]]
            sent_again = {id(call[4]) for call in again}
            for *_, reply in calls:
                if not reply.done() and id(reply) not in sent_again:
                    reply.set_exception(copy.copy(exc))
            again = [call for call in again if not call[4].done()]
            if node is not None:
                self.refresh()  # the node may have failed over
            if again and node is None:
                await self._answer(None, again, retry=False)
            elif again:
                await self._dispatch(again, retry=False)
            return
        missing = [i for i, result in enumerate(replies) if self.reload is not None and not_found(result)]
        if missing:  # a Redis that lost the library: those calls did not run
            try:  # load the library (on every master) once, then run them again
                await self._reload_once()
                resent = [self._queue(*calls[i][:4]) for i in missing]
                results: list[Any] = list(await asyncio.gather(*resent, return_exceptions=True))
                for i, result in zip(missing, results, strict=True):
                    replies[i] = result
            except Exception as exc:
                for i in missing:
                    replies[i] = exc
        for (*_, reply), result in zip(calls, replies, strict=True):
            if reply.done():  # its caller was cancelled
                continue
            if isinstance(result, Exception):
                reply.set_exception(result)
            else:
                reply.set_result(result)
