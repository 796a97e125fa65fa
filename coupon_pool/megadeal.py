"""The MEGADEAL gate: system-wide concurrency and rate limits with bounded, fair waiting.

All state is in Redis (lua/megadeal_enter.lua, lua/megadeal_leave.lua), so the limits hold
across every app process. docs/architecture.md describes the algorithm.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .connection import connect
from .errors import MegadealBusy, PoolEmpty
from .keys import Keys
from .models import CouponType
from .results import Allocation
from .scripts import Allocated, Scripts, Waiting
from .settings import MegadealLimits, Settings
from .store import allocation

log = logging.getLogger("coupon_pool.megadeal")

WINDOW_MS = 1000  # the rate limit is per rolling second
HEARTBEAT_MS = 1000  # a waiter calls Redis again at least this often
GRACE_MS = 1000  # a waiter silent this long past its heartbeat has died: its place is freed


@dataclass(frozen=True)
class GateStatus:
    slots: int  # held, all processes (as of the last gate call: ended leases count until then)
    queued: int  # all processes
    waiting: int  # in this process


class MegadealGate:
    """Admits MEGADEAL allocations within the limits; beside the Store, on the same Redis."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        limits: MegadealLimits | None = None,
        *,
        blocking_redis: Redis | None = None,
        audit_max_len: int = 100_000,
    ) -> None:
        """``blocking_redis`` serves the waits (BLPOP); give it its own pool in a server."""
        self.redis = redis
        self.audit_max_len = audit_max_len
        self.blocking_redis = blocking_redis or redis
        self.keys = keys
        self.limits = limits or MegadealLimits()
        scripts = Scripts(redis)
        self._enter, self._leave = scripts.megadeal_enter, scripts.megadeal_leave
        self._enter_keys = [
            keys.available(CouponType.MEGADEAL), keys.exhausted, keys.stats, keys.audit,
            keys.megadeal_queue, keys.megadeal_alive, keys.megadeal_slots, keys.megadeal_window,
            keys.megadeal_ticket, keys.megadeal_high_water,
        ]  # fmt: skip
        self._leave_keys = [
            keys.megadeal_queue,
            keys.megadeal_alive,
            keys.megadeal_slots,
            keys.megadeal_window,
        ]
        self.waiting = 0  # in this process

    @classmethod
    def from_settings(cls, settings: Settings, redis: Redis) -> MegadealGate:
        """The gate of ``settings``' pool on ``redis``, with a pool of its own for the waits."""
        limits = settings.megadeal
        # Waiters block on their own connections, so they never starve other requests.
        blocking = connect(settings, limits.max_waiters, HEARTBEAT_MS / 1000 + settings.redis_timeout_s)
        keys = Keys(settings.key_namespace)
        return cls(redis, keys, limits, blocking_redis=blocking, audit_max_len=settings.audit_max_len)

    async def aclose(self) -> None:
        if self.blocking_redis is not self.redis:
            await self.blocking_redis.aclose()

    async def allocate(self, user_id: str) -> Allocation:
        """Wait for admission (FIFO, within the limits), then allocate a MEGADEAL coupon."""
        async with self.slot(user_id) as allocated:
            return allocation(allocated, user_id, CouponType.MEGADEAL)

    async def status(self) -> GateStatus:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.megadeal_slots)
            pipe.zcard(self.keys.megadeal_queue)
            slots, queued = await pipe.execute()
        return GateStatus(slots=slots, queued=queued, waiting=self.waiting)

    @asynccontextmanager
    async def slot(self, user_id: str) -> AsyncIterator[Allocated]:
        """Wait for a slot, allocating a MEGADEAL coupon on admission; hold the slot inside.

        Yields the coupon allocated. Raises PoolEmpty at once when no MEGADEAL coupon is
        left, MegadealBusy when no slot came within max_wait_s.
        """
        ticket, allocated = await self._wait_for_admission(user_id)
        try:
            yield allocated
        finally:
            await self._leave_quietly(ticket)

    async def _wait_for_admission(self, user_id: str) -> tuple[str, Allocated]:
        if self.waiting >= self.limits.max_waiters:
            raise MegadealBusy(
                f"{self.waiting} MEGADEAL requests are already waiting here", headers={"Retry-After": "1"}
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.max_wait_s
        ticket = ""
        self.waiting += 1
        try:
            while True:
                reply = await self._enter(keys=self._enter_keys, args=self._enter_args(user_id, ticket))
                ticket = reply[1]
                if reply[0] == "ok":
                    return ticket, Allocated(*reply[2:])
                if reply[0] == "pool_empty":
                    raise PoolEmpty("no MEGADEAL coupon is available for this user")
                waiting = Waiting(*reply[2:])
                remaining = deadline - loop.time()
                if remaining <= 0:
                    retry_after = max(1, math.ceil((int(waiting.rank) + 1) / self.limits.rate_per_s))
                    raise MegadealBusy(
                        f"no MEGADEAL slot within {self.limits.max_wait_s:g} s; "
                        f"{waiting.rank} requests are ahead",
                        headers={"Retry-After": str(retry_after)},
                    )
                wait = min(int(waiting.wait_ms) / 1000, remaining)
                if waiting.reason == "rate":
                    await asyncio.sleep(wait)  # the window opens at a known moment
                else:
                    await self.blocking_redis.blpop([self.keys.megadeal_wake(ticket)], timeout=wait)
        except BaseException:
            if ticket:
                await self._leave_quietly(ticket)
            raise
        finally:
            self.waiting -= 1

    async def _leave_quietly(self, ticket: str) -> None:
        # When Redis is unreachable the lease and the heartbeat free the place instead.
        try:
            await self._leave(keys=self._leave_keys, args=self._leave_args(ticket))
        except RedisError as exc:
            log.warning("could not leave the MEGADEAL gate (ticket %s): %s", ticket, exc)

    def _enter_args(self, user_id: str, ticket: str) -> list[str | int]:
        lim = self.limits
        return [
            self.keys.coupon_prefix, user_id, CouponType.MEGADEAL.value, ticket, lim.max_concurrent,
            lim.rate_per_s, WINDOW_MS, int(lim.lease_s * 1000), HEARTBEAT_MS, GRACE_MS, self.audit_max_len,
        ]  # fmt: skip

    def _leave_args(self, ticket: str) -> list[str | int]:
        lim = self.limits
        keep_ms = HEARTBEAT_MS + GRACE_MS
        return [
            ticket,
            self.keys.megadeal_wake_prefix,
            lim.max_concurrent,
            lim.rate_per_s,
            WINDOW_MS,
            keep_ms,
        ]
