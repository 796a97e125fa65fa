"""The periodic purge (background.purge_periodically) on a driven clock: the event loop's
clock moves when the test says, so each turn of every loop is one step of the test, while
Redis, which expires the purge lock, keeps its own time. Whether a round is purged then
depends on the lock alone, never on how two clocks happen to line up."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from coupon_pool.http.background import purge_periodically
from coupon_pool.http.middleware import JsonLines
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from support.factories import expired_coupon

INTERVAL_S = 60.0  # in Redis's time, a lock taken at one turn stands through all the test's turns


class Lines(JsonLines):
    """The log lines a loop writes, kept; each one is news for ``progress``."""

    def __init__(self, progress: asyncio.Event) -> None:
        super().__init__()
        self.written: list[dict[str, Any]] = []
        self.progress = progress

    def write(self, **fields: Any) -> None:
        self.written.append(fields)
        self.progress.set()


class Process:
    """One app process's purge loop, on a store of its own; it counts its turns."""

    def __init__(self, redis: Redis, monkeypatch: pytest.MonkeyPatch, progress: asyncio.Event) -> None:
        self.store = Store(redis, Keys("cp"))
        self.lines, self.stop, self.turns, self.granted = Lines(progress), asyncio.Event(), 0, 0
        claim = self.store.try_purge_lock

        async def counted(*args: Any) -> bool:
            got = await claim(*args)
            self.turns, self.granted = self.turns + 1, self.granted + got
            progress.set()
            return got

        monkeypatch.setattr(self.store, "try_purge_lock", counted)
        self.task = asyncio.create_task(purge_periodically(self.store, INTERVAL_S, self.lines, self.stop))

    @property
    def purges(self) -> int:
        return sum(1 for line in self.lines.written if line.get("event") == "purge")

    @property
    def idle(self) -> bool:
        """Between turns: every claim answered, and the purge of each granted one logged."""
        return self.purges == self.granted


class DrivenClock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        loop = asyncio.get_running_loop()
        real, self.offset = loop.time, 0.0
        monkeypatch.setattr(loop, "time", lambda: real() + self.offset)
        self.progress = asyncio.Event()

    async def start(self, redis: Redis, monkeypatch: pytest.MonkeyPatch, count: int) -> list[Process]:
        """``count`` processes, each waiting for its first turn."""
        processes = [Process(redis, monkeypatch, self.progress) for _ in range(count)]
        await asyncio.sleep(0)  # each loop runs to its first wait (the ready queue is FIFO)
        return processes

    async def turn(self, processes: list[Process]) -> list[int]:
        """One interval on; when every live loop has had its turn, the purges each made."""
        before = [p.purges for p in processes]
        turns = [p.turns + (not p.task.done()) for p in processes]
        self.offset += INTERVAL_S
        await self.until(lambda: all(p.turns == t and p.idle for p, t in zip(processes, turns, strict=True)))
        return [p.purges - b for p, b in zip(processes, before, strict=True)]

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):  # the clock stands still meanwhile: 10 s of real time
            while not done():
                await self.progress.wait()
                self.progress.clear()


async def test_one_process_purges_at_every_turn_while_the_last_turns_lock_still_stands(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = DrivenClock(monkeypatch)
    processes = await clock.start(redis, monkeypatch, 3)

    rounds = [await clock.turn(processes) for _ in range(5)]

    # The first turn's lock stands in Redis through the later turns: its holder renews it
    # (it used to find it taken, as a process may a millisecond after an interval, and skip).
    assert [sum(r) for r in rounds] == [1, 1, 1, 1, 1]
    holder = next(i for i, purged in enumerate(rounds[0]) if purged)
    assert all(r[holder] == 1 for r in rounds)
    assert 0 < await redis.pttl("{cp}:purge:lock") <= INTERVAL_S * 1000
    for p in processes:
        p.stop.set()
    await asyncio.gather(*(p.task for p in processes))


async def test_when_the_purging_process_stops_another_takes_over_once_its_lock_lapses(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = DrivenClock(monkeypatch)
    processes = await clock.start(redis, monkeypatch, 3)
    first = (await clock.turn(processes)).index(1)
    processes[first].stop.set()
    await processes[first].task
    await redis.delete("{cp}:purge:lock")  # its lease lapses, an interval after its last turn
    await processes[0].store.upload([expired_coupon("OLD")])

    rounds = [await clock.turn(processes) for _ in range(3)]

    assert [sum(r) for r in rounds] == [1, 1, 1]
    assert rounds[0][first] == 0
    assert rounds[0] == rounds[1] == rounds[2]  # the new holder renews it in turn
    taker = processes[rounds[0].index(1)]
    assert taker.lines.written[0]["purged"]["STANDARD"] == 1  # it did purge
    for p in processes:
        p.stop.set()
    await asyncio.gather(*(p.task for p in processes))
