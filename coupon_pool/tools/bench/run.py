"""The load loop: N keep-alive connections, each sending one request after another."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from ..common import ProgressLine
from .http import Connection, HttpError, Target


class Scenario(Protocol):
    def next_request(self) -> tuple[str, bytes] | None:
        """The next (operation name, request bytes), or None when there is no more work."""

    def on_response(self, op: str, status: int, body: bytes) -> None:
        """Learn from an answer (for example, remember an allocated code to redeem)."""


@dataclass
class OpRecord:
    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class Measured:
    """What one load run saw while measuring (the warm-up is left out)."""

    seconds: float
    ops: dict[str, OpRecord]

    @property
    def requests(self) -> int:
        return sum(len(r.latencies_ns) for r in self.ops.values())

    @property
    def errors(self) -> Counter[str]:
        return sum((r.errors for r in self.ops.values()), Counter())


def error_code(status: int, body: bytes) -> str:
    """The problem ``code`` of an error answer, else ``http_<status>``."""
    try:
        code = orjson.loads(body).get("code")
    except (orjson.JSONDecodeError, AttributeError):
        code = None
    return str(code) if code else f"http_{status}"


async def drive(
    target: Target,
    scenario: Scenario,
    connections: int,
    duration_s: float | None,
    requests: int | None,
    warmup_s: float,
    progress: ProgressLine | None = None,
    label: str = "",
) -> Measured:
    """Run ``scenario`` for ``duration_s`` or ``requests`` after ``warmup_s`` of the same load.

    ``progress`` gets a line a second, naming ``label`` (what is measured): the warm-up's,
    then the measurement's, and a last one with the figures of the whole measurement.
    """
    ops: dict[str, OpRecord] = {}
    measuring = warmup_s <= 0
    remaining = requests
    stop = False

    async def worker(conn: Connection | None) -> None:
        nonlocal remaining
        while not stop:
            if measuring and remaining is not None:
                if remaining <= 0:
                    return
                remaining -= 1
            item = scenario.next_request()
            if item is None:
                return
            op, request = item
            started = time.perf_counter_ns()
            try:
                conn = conn or await target.connect()
                status, body = await conn.send(request)
            except (HttpError, OSError) as exc:
                if conn:
                    conn.close()
                conn = None
                status, body = 0, str(exc).encode()
            elapsed = time.perf_counter_ns() - started
            scenario.on_response(op, status, body)
            if measuring:
                record = ops.get(op) or ops.setdefault(op, OpRecord())
                record.latencies_ns.append(elapsed)
                if status == 0:
                    record.errors["connection_error"] += 1
                elif status >= 400:
                    record.errors[error_code(status, body)] += 1
        if conn:
            conn.close()

    tasks = [asyncio.create_task(worker(conn)) for conn in await _open(target, connections)]
    all_done = asyncio.gather(*tasks)

    async def run_until(deadline: float | None, line: Callable[[float], str]) -> None:
        """Let the workers run until ``deadline`` (or their end), a progress tick a second."""
        began = time.perf_counter()
        while not all_done.done():
            left = deadline - time.perf_counter() if deadline else 1.0
            if left <= 0:
                return
            await asyncio.wait([all_done], timeout=min(1.0, left))
            now = time.perf_counter()
            # Not in the last half second: the caller's closing line follows.
            if progress and not all_done.done() and (deadline is None or deadline - now > 0.5):
                progress.tick(line(now - began))

    if warmup_s > 0:
        await run_until(
            time.perf_counter() + warmup_s, lambda s: f"{label:<9}  warm-up {s:4.1f} of {warmup_s:g} s"
        )
        measuring = True
    started = time.perf_counter()
    await run_until(started + duration_s if duration_s else None, lambda s: _progress_line(label, ops, s))
    stop = True
    await all_done
    seconds = time.perf_counter() - started
    if progress:
        progress.tick(_progress_line(label, ops, seconds))
        progress.end()
    return Measured(seconds=seconds, ops=ops)


async def _open(target: Target, count: int) -> list[Connection | None]:
    """Open the connections one by one: opened all at once, one server worker of several
    may accept them all, and keep-alive would pin the whole load to it."""
    opened: list[Connection | None] = []
    for _ in range(count):
        try:
            opened.append(await target.connect())
        except OSError:
            opened.append(None)  # the worker reconnects, and counts the failure if it fails again
        await asyncio.sleep(0.002)
    return opened


def _progress_line(label: str, ops: dict[str, OpRecord], seconds: float) -> str:
    count = sum(len(r.latencies_ns) for r in ops.values())
    errors = sum(sum(r.errors.values()) for r in ops.values())
    rate = count / max(seconds, 1e-9)
    return f"{label:<9}  {seconds:6.1f} s  {count:>9,} requests  {rate:>9,.0f} req/s  errors {errors:,}"
