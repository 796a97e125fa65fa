"""The load loop: N keep-alive connections, each sending one request after another."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import orjson

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
    progress: Callable[[str], None] | None = None,
) -> Measured:
    """Run ``scenario`` for ``duration_s`` or ``requests`` after ``warmup_s`` of the same load."""
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
    if warmup_s > 0:
        await asyncio.wait([all_done], timeout=warmup_s)
        measuring = True
    started = time.perf_counter()
    deadline = started + duration_s if duration_s else None
    while not all_done.done():
        now = time.perf_counter()
        if deadline and now >= deadline:
            stop = True
            break
        wait = min(1.0, deadline - now) if deadline else 1.0
        await asyncio.wait([all_done], timeout=wait)
        if progress and wait == 1.0 and not all_done.done():  # once a second, not in the last instant
            progress(_progress_line(ops, time.perf_counter() - started))
    await all_done
    return Measured(seconds=time.perf_counter() - started, ops=ops)


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


def _progress_line(ops: dict[str, OpRecord], seconds: float) -> str:
    count = sum(len(r.latencies_ns) for r in ops.values())
    errors = sum(sum(r.errors.values()) for r in ops.values())
    rate = count / max(seconds, 1e-9)
    return f"{seconds:6.1f} s  {count:>9,} requests  {rate:>9,.0f} req/s  errors {errors:,}"


def stderr_progress(line: str) -> None:
    sys.stderr.write("\r" + line)
    sys.stderr.flush()
