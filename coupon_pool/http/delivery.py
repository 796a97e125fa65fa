"""Webhook delivery by the app processes: the audit trail's events POSTed to WEBHOOK_URL,
signed (coupon_pool/webhooks.py), at least once, in stream order per stream.

Each process runs one task per audit stream. A task that takes the stream's lease
(pool/deliveries.py) delivers it as a consumer of the endpoint's group: first what the group
was handed and never acknowledged (a dead holder's batch: XAUTOCLAIM), then what is new, a
batch at a time, each acknowledged once answered 2xx (or parked). A batch that fails is sent
again with exponential backoff and full jitter until its oldest event is older than
WEBHOOK_RETRY_HORIZON_S, then parked. A task that does not hold the lease tries to take it
every quarter of WEBHOOK_LEASE_S; the holder renews it every third. None of this is on the
request path: the tasks share the process's event loop and Redis client, nothing more.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass

from redis.exceptions import RedisError

from ..pool.connection import process_name
from ..pool.deliveries import KIND, Deliveries
from ..pool.feeds import Event, FeedError
from ..pool.store import Store
from ..settings import Settings
from ..webhooks import Sender, body_of
from .metrics import WebhookMetrics
from .middleware import JsonLines

ENDPOINT = "default"  # the one endpoint WEBHOOK_URL configures
IDLE_S = 0.15  # a held stream with nothing new is read again after this long
# After a batch that was not full, the next read waits this long: under a steady load a
# stream then goes out in batches of about 0.1 s of events, not in many POSTs of a few each.
LINGER_S = 0.1
ERROR_PAUSE_S = 1.0  # after Redis failed a stream's read or acknowledgement
STATUS_EVERY_S = 2.0  # how often the gauges (parked, oldest undelivered) are read from Redis


@dataclass(frozen=True)
class Policy:
    ops: frozenset[str]  # empty: every op
    batch: int
    horizon_ms: int
    backoff_s: float
    max_backoff_s: float
    lease_s: float
    parked_max: int

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        return cls(
            ops=frozenset(settings.webhook_ops),
            batch=settings.webhook_batch,
            horizon_ms=round(settings.webhook_retry_horizon_s * 1000),
            backoff_s=settings.webhook_backoff_s,
            max_backoff_s=settings.webhook_max_backoff_s,
            lease_s=settings.webhook_lease_s,
            parked_max=settings.webhook_parked_max,
        )

    def backoff(self, attempt: int) -> float:
        """Full jitter: a wait drawn from 0 to the capped exponential step."""
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** min(attempt, 60)))


def consumer_name() -> str:
    """This process's name in the group (its connections' name, ':' made '.')."""
    return process_name().replace(":", ".")


def entry_ms(event: Event) -> int:
    return int(event.entry.partition("-")[0])


class Delivery:
    """This process's share of one endpoint's deliveries."""

    def __init__(
        self, store: Store, settings: Settings, lines: JsonLines, stop: asyncio.Event, metrics: WebhookMetrics
    ) -> None:
        self.feeds = store.feeds
        self.deliveries = Deliveries(store.ctx, ENDPOINT)
        self.group = self.deliveries.group
        self.policy = Policy.of(settings)
        self.sender = Sender(settings.webhook_url, settings.webhook_secret, settings.webhook_timeout_s)
        self.lines, self.stop, self.metrics = lines, stop, metrics
        self.consumer = consumer_name()
        self.owner = f"{process_name()}/{uuid.uuid4().hex[:8]}"  # the leases' value
        self.created = False  # the group exists

    async def prepare(self) -> None:
        """Make the endpoint's group now, before the process serves, so every operation it
        serves is delivered (if Redis fails, ``run`` tries again)."""
        self.created = await self._create()

    async def run(self) -> None:
        """Deliver until ``stop`` is set: the group made first (from the next entry written)."""
        try:
            while not self.created and not await self._create():
                await self._pause(1.0)
            if self.stop.is_set():
                return
            tasks = [asyncio.create_task(self._stream(n)) for n in range(self.feeds.streams)]
            tasks.append(asyncio.create_task(self._status()))
            try:
                await self.stop.wait()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks, timeout=5)
        finally:
            await self.sender.aclose()

    async def _create(self) -> bool:
        if self.stop.is_set():
            return True
        try:
            await self.feeds.create(self.group, "now", KIND)
        except RedisError as exc:
            self.lines.write(level="warning", event="webhook", error=repr(exc), action="create group")
            return False
        return True

    async def _stream(self, n: int) -> None:
        """Take stream ``n``'s lease when it is free, and deliver the stream while held."""
        while not self.stop.is_set():
            try:
                held = await self.deliveries.hold(n, self.owner, self._lease_ms)
            except RedisError as exc:
                self.lines.write(level="warning", event="webhook", stream=n, error=repr(exc))
                held = False
            if held:
                await self._while_held(n)
            await self._pause(self.policy.lease_s / 4)

    @property
    def _lease_ms(self) -> int:
        return round(self.policy.lease_s * 1000)

    async def _while_held(self, n: int) -> None:
        """Deliver stream ``n`` and renew its lease every third of it; stop delivering as soon
        as it is lost (or cannot be renewed before it would run out)."""
        held = asyncio.Event()
        held.set()
        work = asyncio.create_task(self._drain(n, held))
        renewed = time.monotonic()
        try:
            while not work.done() and not self.stop.is_set():
                await asyncio.wait({work}, timeout=self.policy.lease_s / 3)
                if work.done() or self.stop.is_set():
                    break
                try:
                    if not await self.deliveries.hold(n, self.owner, self._lease_ms):
                        break
                    renewed = time.monotonic()
                except RedisError:
                    if time.monotonic() - renewed > self.policy.lease_s * 0.8:
                        break
        finally:
            held.clear()
            work.cancel()
            await asyncio.wait({work}, timeout=5)
            if not work.cancelled() and work.done() and work.exception():
                self.lines.write(level="error", event="webhook", stream=n, error=repr(work.exception()))
            with suppress(RedisError):
                await self.deliveries.release(n, self.owner)

    async def _drain(self, n: int, held: asyncio.Event) -> None:
        """While ``held``: the group's pending entries of stream ``n`` (another holder's, if it
        died), then new ones; each batch delivered (or parked) before the next is read."""
        claiming = True
        while held.is_set() and not self.stop.is_set():
            try:
                events: list[Event] = []
                if claiming:
                    events = await self.feeds.claim(self.group, self.consumer, n, self.policy.batch)
                    # A claim may meet only entries trimmed meanwhile (it drops them): more may follow.
                    claiming = bool(events) or await self.deliveries.pending(n) > 0
                if not claiming:
                    events = await self.feeds.read(self.group, self.consumer, n, self.policy.batch)
                if not events:
                    await self._pause(IDLE_S)
                    continue
                if await self._deliver(n, events, held):
                    await self.feeds.ack(self.group, n, [e.entry for e in events])
                if len(events) < self.policy.batch:  # caught up: let the next batch fill a little
                    await self._pause(LINGER_S)
            except (RedisError, FeedError) as exc:
                self.lines.write(level="warning", event="webhook", stream=n, error=repr(exc))
                claiming = True  # what was read and not acknowledged is still the group's pending
                if isinstance(exc, FeedError) or "NOGROUP" in str(exc):  # dropped by an operator
                    await self._create()
                await self._pause(ERROR_PAUSE_S)

    async def _deliver(self, n: int, events: list[Event], held: asyncio.Event) -> bool:
        """POST the batch (its events of WEBHOOK_OPS) until taken, or parked: True then; False
        if the lease was lost or the process stops first (the batch stays pending)."""
        ops = self.policy.ops
        chosen = [e for e in events if not ops or e.body.get("op") in ops]
        self.metrics.skipped.inc(len(events) - len(chosen))
        if not chosen:
            return True
        body = body_of([e.body for e in chosen])
        oldest_ms = entry_ms(chosen[0])  # a batch is in stream order (read or claimed)
        attempt = 0
        while held.is_set() and not self.stop.is_set():
            if attempt:
                self.metrics.retries.inc()
            outcome = await self.sender.post(body)
            if outcome.ok:
                self.metrics.batches.inc()
                self.metrics.events.inc(len(chosen))
                return True
            self.metrics.failures.inc()
            now_ms = round(time.time() * 1000)
            if now_ms - oldest_ms >= self.policy.horizon_ms:
                await self._park(n, chosen, outcome.reason, now_ms)
                return True
            wait_s = self.policy.backoff(attempt)
            attempt += 1
            self.lines.write(
                level="warning", event="webhook_retry", endpoint=self.deliveries.endpoint, stream=n,
                events=len(chosen), reason=outcome.reason, attempt=attempt, retry_in_s=round(wait_s, 3),
            )  # fmt: skip
            await self._pause(wait_s)
        return False

    async def _park(self, n: int, events: list[Event], reason: str, now_ms: int) -> None:
        dropped = await self.deliveries.park(n, events, reason, now_ms, self.policy.parked_max)
        self.metrics.parked.inc()
        self.lines.write(
            level="error", event="webhook_parked", endpoint=self.deliveries.endpoint, stream=n,
            events=len(events), first=events[0].id, last=events[-1].id, reason=reason,
            message="retries ran out (WEBHOOK_RETRY_HORIZON_S): batch parked; coupon-pool webhooks redeliver",
        )  # fmt: skip
        if dropped:
            self.lines.write(
                level="error", event="webhook_parked_dropped", endpoint=self.deliveries.endpoint, stream=n,
                dropped=dropped, reason="WEBHOOK_PARKED_MAX reached: the oldest parked batches were dropped",
            )  # fmt: skip

    async def _status(self) -> None:
        """Every STATUS_EVERY_S, the gauges: batches parked, and the oldest event not taken."""
        while not self.stop.is_set():
            try:
                status = await self.deliveries.status(self.feeds, self.sender.url)
                self.metrics.parked_now.set(status.parked)
                self.metrics.oldest.set(status.oldest_undelivered_age_s)
            except RedisError as exc:
                self.lines.write(level="warning", event="webhook", error=repr(exc), action="status")
            await self._pause(STATUS_EVERY_S)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the process stops."""
        with suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stop.wait()
