"""Webhook delivery: the audit trail's events POSTed to WEBHOOK_URL, signed
(coupon_pool/webhooks.py), at least once, in stream order per stream.

Each ``coupon-pool serve`` with WEBHOOK_URL set runs one delivery process beside its request
workers (``DeliveryProcess``, started before uvicorn and stopped after it), so no delivery
work shares a core's event loop with requests. The app's workers only make the endpoint's
group before they serve (``prepare_group``), so every operation they serve is delivered.

The delivery process runs one task per audit stream. A task that takes the stream's lease
(pool/deliveries.py) delivers it as a consumer of the endpoint's group: first what the group
was handed and never acknowledged (a dead holder's batch: XAUTOCLAIM), then what is new, a
batch at a time, each acknowledged once answered 2xx (or parked). A batch that fails is sent
again with exponential backoff and full jitter until its oldest event is older than
WEBHOOK_RETRY_HORIZON_S, then parked. A task that does not hold the lease tries to take it
every quarter of WEBHOOK_LEASE_S; the holder renews it every third. Several serve processes
share the streams by their leases; one that dies (its delivery process stops at once, as
their pipe closes, or is killed with it) leaves its leases to run out, and another takes over.
Every process adds to the endpoint's counters in Redis, which /metrics and GET
/v1/webhooks read.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from ..pool.connection import process_name
from ..pool.deliveries import KIND, Deliveries, group_of
from ..pool.feeds import Event, FeedError, Feeds
from ..pool.placement import LayoutMismatch
from ..pool.store import Store
from ..settings import Hook, Settings
from ..webhooks import Sender, body_of
from .diagnostics import dump_tasks_on_sigusr1
from .middleware import JsonLines

IDLE_S = 0.15  # a held stream with nothing new is read again after this long
# After a batch that was not full, the next read waits this long: under a steady load a
# stream then goes out in batches of about 0.1 s of events, not in many POSTs of a few each.
LINGER_S = 0.1
ERROR_PAUSE_S = 1.0  # after Redis failed a stream's read or acknowledgement
RESTART_PAUSE_S = 1.0  # a delivery process that died is started again after this long,
RESTART_MAX_PAUSE_S = 60.0  # doubled each time it dies again soon, up to this;
RESTART_RESET_S = 60.0  # and back to RESTART_PAUSE_S once one has lived this long
# What Redis may raise: a cluster's own failures (no node for a slot, a takeover) are not RedisErrors.
REDIS_ERRORS = (RedisError, RedisClusterException)
STOP_GRACE_S = 10.0  # at serve's end, the delivery process's time to give its leases up


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
    def of(cls, settings: Settings, hook: Hook) -> Policy:
        return cls(
            ops=frozenset(hook.ops),
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
        self, store: Store, settings: Settings, hook: Hook, lines: JsonLines, stop: asyncio.Event
    ) -> None:
        self.feeds = store.feeds
        self.deliveries = Deliveries(store.ctx, hook.name)
        self.group = self.deliveries.group
        self.policy = Policy.of(settings, hook)
        self.sender = Sender(hook.url, hook.secret, settings.webhook_timeout_s)
        self.lines, self.stop = lines, stop
        self.consumer = consumer_name()
        self.owner = f"{process_name()}/{uuid.uuid4().hex[:8]}"  # the leases' value

    async def run(self) -> None:
        """Deliver until ``stop`` is set: the group made first (from the next entry written),
        if the app's workers have not made it already."""
        try:
            while not await self._create():
                await self._pause(1.0)
            if self.stop.is_set():
                return
            tasks = [asyncio.create_task(self._stream(n)) for n in range(self.feeds.streams)]
            try:
                await self.stop.wait()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks, timeout=5)
        finally:
            await self.sender.aclose()

    async def _create(self) -> bool:
        return self.stop.is_set() or await prepare_group(self.feeds, self.deliveries.endpoint, self.lines)

    async def _stream(self, n: int) -> None:
        """Take stream ``n``'s lease when it is free, and deliver the stream while held."""
        while not self.stop.is_set():
            try:
                held = await self.deliveries.hold(n, self.owner, self._lease_ms)
            except REDIS_ERRORS as exc:
                self._warn(stream=n, error=repr(exc))
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
                except REDIS_ERRORS:
                    if time.monotonic() - renewed > self.policy.lease_s * 0.8:
                        break
        finally:
            held.clear()
            work.cancel()
            await asyncio.wait({work}, timeout=5)
            if not work.cancelled() and work.done() and work.exception():
                self.lines.write(
                    level="error", event="webhook", endpoint=self.deliveries.endpoint, stream=n,
                    error=repr(work.exception()),
                )  # fmt: skip
            with suppress(*REDIS_ERRORS):
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
            except (*REDIS_ERRORS, FeedError) as exc:
                self._warn(stream=n, error=repr(exc))
                claiming = True  # what was read and not acknowledged is still the group's pending
                if isinstance(exc, FeedError) or "NOGROUP" in str(exc):  # dropped by an operator
                    await self._create()
                await self._pause(ERROR_PAUSE_S)

    async def _deliver(self, n: int, events: list[Event], held: asyncio.Event) -> bool:
        """POST the batch (its events of WEBHOOK_OPS) until taken, or parked: True then; False
        if the lease was lost or the process stops first (the batch stays pending)."""
        ops = self.policy.ops
        chosen = [e for e in events if not ops or e.body.get("op") in ops]
        skipped = len(events) - len(chosen)
        if not chosen:
            await self._count(events_skipped=skipped)
            return True
        body = body_of([e.body for e in chosen])
        oldest_ms = entry_ms(chosen[0])  # a batch is in stream order (read or claimed)
        attempt = 0
        while held.is_set() and not self.stop.is_set():
            if attempt:
                await self._count(retries=1)
            outcome = await self.sender.post(body)
            if outcome.ok:
                await self._count(batches_delivered=1, events_delivered=len(chosen), events_skipped=skipped)
                return True
            await self._count(failures=1)
            now_ms = round(time.time() * 1000)
            if now_ms - oldest_ms >= self.policy.horizon_ms:
                await self._park(n, chosen, outcome.reason, now_ms)
                await self._count(events_skipped=skipped)
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
        await self._count(batches_parked=1)
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

    def _warn(self, **fields: object) -> None:
        self.lines.write(level="warning", event="webhook", endpoint=self.deliveries.endpoint, **fields)

    async def _count(self, **added: int) -> None:
        """Add to the endpoint's counters in Redis; a failure is logged, and delivery goes on
        (the counters then miss what this call added)."""
        try:
            await self.deliveries.count(**{name: n for name, n in added.items() if n})
        except REDIS_ERRORS as exc:
            self._warn(error=repr(exc), action="count", counts=added)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the process stops."""
        with suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stop.wait()


async def prepare_group(feeds: Feeds, endpoint: str, lines: JsonLines) -> bool:
    """Make ``endpoint``'s group (from the next entry written) unless it exists: False, with a
    warning, if Redis failed (the delivery process tries again until it succeeds)."""
    try:
        await feeds.create(group_of(endpoint), "now", KIND)
    except REDIS_ERRORS as exc:
        lines.write(
            level="warning", event="webhook", endpoint=endpoint, error=repr(exc), action="create group"
        )
        return False
    return True


class DeliveryProcess:
    """``coupon-pool serve``'s delivery process: started before uvicorn, told to stop after
    uvicorn returns (it then gives its leases up), and started again if it dies meanwhile,
    with an error line each time and a pause that doubles while it keeps dying.

    It is told by a pipe, not by a signal: it ignores SIGINT and SIGTERM, which a terminal or
    a service manager sends the whole process group while uvicorn may still be finishing its
    requests (their events are delivered meanwhile). The pipe's end closing without a word
    (serve killed) stops it too.
    """

    def __init__(self, settings: Settings, lines: JsonLines | None = None) -> None:
        self.settings = settings
        self.lines = lines or JsonLines()
        self._context = multiprocessing.get_context("spawn")  # nothing of uvicorn's inherited
        self._process: Any = None
        self._tell: Any = None  # the parent's end of the pipe to the process
        self._started = 0.0  # time.monotonic() when the process was last started
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="delivery-watch", daemon=True)

    def start(self) -> None:
        os.environ[SERVE_PID] = str(os.getpid())  # uvicorn's workers inherit it
        self._spawn()
        self._watcher.start()

    def _spawn(self) -> None:
        told, tell = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=main, args=(self.settings, told), name="coupon-pool-delivery", daemon=True
        )
        try:
            process.start()
        except BaseException:
            tell.close()
            raise
        finally:
            told.close()  # the process holds its own copy: its end closes with it
        if self._tell is not None:
            self._tell.close()  # the dead one's
        self._process, self._tell, self._started = process, tell, time.monotonic()

    def _watch(self) -> None:
        pause = RESTART_PAUSE_S
        while not self._stopping.is_set():
            process = self._process
            process.join()
            if self._stopping.is_set():
                return
            if time.monotonic() - self._started >= RESTART_RESET_S:  # it had settled: start soon
                pause = RESTART_PAUSE_S
            self.lines.write(
                level="error", event="delivery_process_exited", exitcode=process.exitcode, pid=process.pid,
                message=f"the webhook delivery process exited; starting another in {pause:g} s",
            )  # fmt: skip
            while not self._stopping.wait(pause):
                pause = min(pause * 2, RESTART_MAX_PAUSE_S)
                try:
                    with self._lock:
                        if self._stopping.is_set():
                            return
                        self._spawn()
                    break
                except Exception as exc:  # OSError (no memory, no process left...), and whatever else
                    self.lines.write(
                        level="error", event="delivery_process_not_started", error=repr(exc)[:500],
                        message=f"the webhook delivery process did not start; trying again in {pause:g} s",
                    )  # fmt: skip

    def stop(self) -> None:
        """Tell it to stop; up to STOP_GRACE_S for it to give its leases up; then SIGKILL."""
        with self._lock:
            self._stopping.set()
            process, tell = self._process, self._tell
        if process is None:
            return
        with suppress(OSError):
            tell.send_bytes(STOP)
        tell.close()
        process.join(STOP_GRACE_S)
        if process.is_alive():
            process.kill()
            process.join(5)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else int(self._process.pid)


STOP = b"stop"  # serve's word to its delivery process, on their pipe
SERVE_PID = "COUPON_POOL_SERVE_PID"  # set by a serve with webhooks, for its workers to see


def started_by_serve() -> bool:
    """True in a serve process with a delivery process (``DeliveryProcess.start``), or in one
    of its uvicorn workers."""
    return os.environ.get(SERVE_PID) in (str(os.getpid()), str(os.getppid()))


def main(settings: Settings, told: Connection) -> None:
    """The delivery process: deliver until serve says stop, or its end of the pipe closes."""
    for number in (signal.SIGINT, signal.SIGTERM):  # sent to the group: serve tells it once uvicorn ends
        signal.signal(number, signal.SIG_IGN)
    asyncio.run(_deliver(settings, told))


async def _deliver(settings: Settings, told: Connection) -> None:
    lines = JsonLines()
    stop = asyncio.Event()
    listening = _listen(told, stop, lines)
    dump_tasks_on_sigusr1()
    store = Store.from_settings(settings)
    try:
        try:
            await store.prepare()
        except REDIS_ERRORS as exc:  # the library is loaded on first use
            lines.write(level="warning", event="webhook", error=repr(exc), action="load the function library")
        except LayoutMismatch as exc:  # the app refuses to start alike; serve then stops this process
            lines.write(level="error", event="layout_mismatch", message=str(exc))
            await stop.wait()
            return
        await asyncio.gather(*(Delivery(store, settings, hook, lines, stop).run() for hook in settings.hooks))
    finally:
        listening()
        await store.aclose()
        lines.flush()


def _listen(told: Connection, stop: asyncio.Event, lines: JsonLines) -> Callable[[], None]:
    """Set ``stop`` when serve says so on ``told``, or when its end closes (serve killed: this
    process then has no serve, and stops as told). Returns what stops listening."""
    loop = asyncio.get_running_loop()

    def readable() -> None:
        loop.remove_reader(told.fileno())
        try:
            told.recv_bytes()
        except (EOFError, OSError):
            lines.write(level="warning", event="webhook", message="serve process gone: delivery stops")
        stop.set()

    def done() -> None:
        loop.remove_reader(told.fileno())

    loop.add_reader(told.fileno(), readable)
    return done
