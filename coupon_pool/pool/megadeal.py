"""The MEGADEAL gate: system-wide concurrency and rate limits with bounded, fair waiting.

All state is in Redis (lua/megadeal_enter.lua, lua/megadeal_leave.lua), so the limits hold
across every app process. docs/architecture.md describes the algorithm.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from ..errors import ClientDisconnected, MegadealBusy
from ..models import CouponType
from ..results import Allocation
from ..settings import MegadealLimits, Settings
from . import keyed
from .codec import ALLOCATE_DETAIL, Allocated, Waiting, allocation, raise_if_error
from .connection import PROCESS_PREFIX, connect, process_name
from .context import AuditCap
from .functions import MEGADEAL_ENTER, MEGADEAL_FORGET, MEGADEAL_LEAVE
from .keys import Keys
from .library import Library
from .wakeups import Wakeups, pause_unless_gone

log = logging.getLogger("coupon_pool.megadeal")
Gone = Callable[[], Awaitable[object]]  # completes when the caller has gone away

WINDOW_MS = 1000  # the rate limit is per rolling second
HEARTBEAT_MS = 500  # a waiter calls Redis again at least this often
SILENT_MS = 3 * HEARTBEAT_MS  # a waiter not heard from for this long holds nobody up
WAKE_KEEP_MS = 2000  # a wake-up waits this long for its waiter
FORGET_INTERVAL_S = 1.0  # how often each process drops the waiters of dead processes


@dataclass(frozen=True)
class GateStatus:
    slots: int  # held, all processes (leases not ended)
    queued: int  # all processes
    waiting: int  # in this process
    admitted_last_s: int  # admissions in the last second, all processes


class MegadealGate:
    """Admits MEGADEAL allocations within the limits; beside the Store, on the same Redis."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        limits: MegadealLimits | None = None,
        *,
        library: Library | None = None,
        blocking_redis: Redis | None = None,
        audit_max_len: int = 100_000,
        audit_cap: AuditCap | None = None,
        max_allocations_per_user: int = 0,
    ) -> None:
        """``library``: the process's (shared with the store); ``blocking_redis`` serves the
        waits (BLPOP): give it its own pool in a server.

        Its keys and the MEGADEAL coupons are in the pool's main slot (``keys``)."""
        self.redis = redis
        self.run = (library or Library(redis)).run
        # The store's (context.AuditCap), so both trim alike while consumer groups read the trail.
        self.audit_cap = audit_cap or AuditCap(audit_max_len, audit_max_len)
        self.max_allocations_per_user = max_allocations_per_user
        self.blocking_redis = blocking_redis or redis
        self.keys = keys
        self.limits = limits or MegadealLimits()
        self._gate_keys = {
            "queue": keys.megadeal_queue,
            "alive": keys.megadeal_alive,
            "slots": keys.megadeal_slots,
            "window": keys.megadeal_window,
            "heard": keys.megadeal_heard,
        }
        lim = self.limits
        self._wake_args: dict[str, Any] = {
            "wake_prefix": keys.megadeal_wake_prefix, "max_concurrent": lim.max_concurrent,
            "rate": lim.rate_per_s, "window_ms": WINDOW_MS, "keep_ms": WAKE_KEEP_MS,
        }  # fmt: skip
        self.waiting = 0  # in this process
        self.wakeups = Wakeups(self.blocking_redis, keys.megadeal_queue, self.limits.max_waiters)

    @classmethod
    def from_settings(
        cls, settings: Settings, redis: Redis, library: Library, audit_cap: AuditCap | None = None
    ) -> MegadealGate:
        """The gate of ``settings``' pool on ``redis`` (calls through ``library``), with a pool
        of its own for the waits."""
        limits = settings.megadeal
        # Waiters block on their own connections, so they never starve other requests.
        blocking = connect(settings, limits.max_waiters, HEARTBEAT_MS / 1000 + settings.redis_timeout_s)
        keys = Keys(settings.key_namespace)
        return cls(
            redis,
            keys,
            limits,
            library=library,
            blocking_redis=blocking,
            audit_max_len=settings.audit_max_len,
            audit_cap=audit_cap,
            max_allocations_per_user=settings.max_allocations_per_user,
        )

    async def aclose(self) -> None:
        await self.wakeups.aclose()
        if self.blocking_redis is not self.redis:
            await self.blocking_redis.aclose()

    async def allocate(
        self,
        user_id: str,
        *,
        hold_s: int | None = None,
        started: float | None = None,
        gone: Gone | None = None,
    ) -> Allocation:
        """Wait for admission (FIFO, within the limits), then allocate a MEGADEAL coupon.

        ``started`` (time.perf_counter) is when the request arrived: the wait is counted
        from then. ``gone`` completes when the caller has gone away: a waiter whose caller
        is gone leaves the queue without being allocated anything. In a keyed operation
        (keyed.Keyed), the first call claims its key (a second request with it waits its
        turn: 409), and the admission stores the answer; a request whose key has an answer
        gets it at once. With ``hold_s``, the coupon is held that long (as Coupons.allocate).
        """
        async with self.slot(user_id, hold_s=hold_s, started=started, gone=gone) as allocated:
            return allocation(allocated, user_id, CouponType.MEGADEAL)

    async def status(self) -> GateStatus:
        """The gate now, by Redis's clock (the scripts' clock): three counts, O(log n) each."""
        now_s, now_us = await self.redis.time()
        now_ms = int(now_s) * 1000 + int(now_us) // 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcount(self.keys.megadeal_slots, f"({now_ms}", "+inf")  # score: the lease's end
            pipe.zcount(self.keys.megadeal_alive, f"({now_ms}", "+inf")  # queued, a silent waiter too
            pipe.zcount(self.keys.megadeal_window, f"({now_ms - 1000}", "+inf")  # score: admitted at
            slots, queued, admitted = await pipe.execute()
        return GateStatus(slots=slots, queued=queued, waiting=self.waiting, admitted_last_s=admitted)

    @asynccontextmanager
    async def slot(
        self,
        user_id: str,
        *,
        hold_s: int | None = None,
        started: float | None = None,
        gone: Gone | None = None,
    ) -> AsyncIterator[Allocated]:
        """Wait for a slot, allocating a MEGADEAL coupon on admission; hold the slot inside.

        Yields the coupon allocated. Raises PoolEmpty at once when no MEGADEAL coupon is
        left, MegadealBusy when no slot came within max_wait_s, ClientDisconnected when
        ``gone`` completed first.
        """
        started = time.perf_counter() if started is None else started
        hold_ms = 0 if hold_s is None else hold_s * 1000
        ticket, allocated = await self._wait_for_admission(user_id, started, gone, hold_ms)
        try:
            yield allocated
        finally:
            if ticket:  # a replayed answer holds no slot
                await self._leave_quietly(ticket)

    async def _wait_for_admission(
        self, user_id: str, started: float, gone: Gone | None, hold_ms: int
    ) -> tuple[str, Allocated]:
        if self.waiting >= self.limits.max_waiters:
            raise MegadealBusy(
                f"{self.waiting} MEGADEAL requests are already waiting here", headers={"Retry-After": "1"}
            )
        deadline = started + self.limits.max_wait_s
        ticket = ""
        watch = asyncio.ensure_future(gone()) if gone else None
        self.waiting += 1
        try:
            while True:
                if watch is not None and watch.done():
                    raise ClientDisconnected("the client went away while waiting for a MEGADEAL slot")
                waited_ms = int((time.perf_counter() - started) * 1000)
                keys, args = self._enter_call(user_id, ticket, waited_ms, hold_ms)
                # Called again with its ticket, the function repeats nothing: safe to resend.
                reply = await self.run(MEGADEAL_ENTER, keys, args, idempotent=bool(ticket))
                if (run := keyed.current()) is not None and run.replayed:  # the stored answer
                    self._raise_if_refused(reply)
                    return "", Allocated._make(reply[1:])
                ticket = reply[1]
                if reply[0] == "ok":
                    return ticket, Allocated._make(reply[2:])
                if reply[0] in ("pool_empty", "user_limit_reached"):
                    ticket = ""  # not queued: nothing to leave
                    self._raise_if_refused(reply)
                if reply[0] == "expired":
                    raise self._busy(int(reply[2]))
                waiting = Waiting._make(reply[2:])
                remaining = deadline - time.perf_counter()
                if remaining <= 0:  # answered at the cap, whatever Redis would say next
                    raise self._busy(int(waiting.rank))
                wait = min(int(waiting.wait_ms) / 1000, remaining)
                if waiting.reason == "rate":
                    pause: Awaitable[Any] = asyncio.sleep(wait)  # the window opens at a known moment
                else:
                    pause = self.wakeups.wait(self.keys.megadeal_wake(ticket), wait)
                await pause_unless_gone(pause, watch)
        except BaseException:
            if ticket:
                await self._leave_quietly(ticket)
            raise
        finally:
            self.waiting -= 1
            if watch is not None:
                watch.cancel()

    def _raise_if_refused(self, reply: list[Any]) -> None:
        raise_if_error(reply, ALLOCATE_DETAIL, type="MEGADEAL", limit=self.max_allocations_per_user)

    def _busy(self, rank: int) -> MegadealBusy:
        retry_after = max(1, math.ceil((rank + 1) / self.limits.rate_per_s))
        return MegadealBusy(
            f"no MEGADEAL slot within {self.limits.max_wait_s:g} s; {rank} requests are ahead",
            headers={"Retry-After": str(retry_after)},
        )

    async def forget_dead_waiters(self) -> int:
        """Drop the queued waiters whose process has no open Redis connection; how many."""
        if not await self.redis.zcard(self.keys.megadeal_queue):
            return 0  # nobody waits: nothing to list
        max_number = int(await self.redis.get(self.keys.megadeal_ticket) or 0)
        if isinstance(self.redis, RedisCluster):  # the connections to the node of the gate's slot
            await self.redis.initialize()  # the slot map, if no call has loaded it yet
            node = self.redis.get_node_from_key(self.keys.megadeal_queue)
            clients = await self.redis.client_list(_type="normal", target_nodes=node)
        else:
            clients = await self.redis.client_list(_type="normal")
        owners = {c["name"] for c in clients if c.get("name", "").startswith(PROCESS_PREFIX)}
        keys, args = MEGADEAL_FORGET.bind(
            **self._gate_keys, **self._wake_args, max_number=max_number, owners=sorted(owners)
        )
        return int(await self.run(MEGADEAL_FORGET, keys, args))

    async def _leave_quietly(self, ticket: str) -> None:
        # When Redis is unreachable the lease and the waiter's deadline free the place instead.
        try:
            keys, args = MEGADEAL_LEAVE.bind(**self._gate_keys, **self._wake_args, ticket=ticket)
            await self.run(MEGADEAL_LEAVE, keys, args)
        except RedisError as exc:
            log.warning("could not leave the MEGADEAL gate (ticket %s): %s", ticket, exc)

    def _enter_call(
        self, user_id: str, ticket: str, waited_ms: int, hold_ms: int
    ) -> tuple[list[Any], list[Any]]:
        lim, k, mega = self.limits, self.keys, CouponType.MEGADEAL
        return MEGADEAL_ENTER.bind(
            **self._gate_keys,
            **self._wake_args,
            available=k.available(mega),
            exhausted=k.exhausted,
            stats=k.stats,
            audit_stream=k.audit,
            counter=k.megadeal_ticket,
            high_water=k.megadeal_high_water,
            held=k.held(mega, user_id),
            listing=k.user_coupons(mega, user_id),
            draining=k.draining(mega),
            due=k.due(mega),
            prefix=k.coupon_prefix,
            user=user_id,
            ctype=mega.value,
            ticket=ticket,
            owner=process_name(),
            lease_ms=int(lim.lease_s * 1000),
            max_sleep_ms=HEARTBEAT_MS,
            silent_ms=SILENT_MS,
            waited_ms=waited_ms,
            max_wait_ms=int(lim.max_wait_s * 1000),
            audit_cap=self.audit_cap.value,
            max_per_user=self.max_allocations_per_user,
            held_prefix=k.held_type_prefix(mega),
            tracked_prefix=k.tracked_prefix,
            slot=k.slot,
            hold_ms=hold_ms,
        )
