"""Reading a body against its deadline: one sweep for all requests, 408 past it, nothing else cancelled."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from starlette.requests import Request

from coupon_pool.errors import ClientDisconnected, RequestTimeout
from coupon_pool.http.bodies import BodyDeadlines

SCOPE = {"type": "http", "method": "POST", "path": "/", "headers": []}


def request_receiving(*messages: dict[str, Any]) -> Request:
    """A request whose receive() gives ``messages``, then waits forever."""
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return Request(SCOPE, receive)


@pytest.fixture
async def deadlines() -> Any:
    bodies = BodyDeadlines(0.4)
    sweeping = asyncio.create_task(bodies.sweep())
    yield bodies
    sweeping.cancel()


async def test_a_body_in_parts_is_read_whole(deadlines: BodyDeadlines) -> None:
    request = request_receiving(
        {"type": "http.request", "body": b'{"a":', "more_body": True},
        {"type": "http.request", "body": b"1}", "more_body": False},
    )
    assert await deadlines.read(request, 100) == b'{"a":1}'
    assert not deadlines._reading


async def test_a_body_that_stops_arriving_ends_after_the_deadline(deadlines: BodyDeadlines) -> None:
    request = request_receiving({"type": "http.request", "body": b'{"a":', "more_body": True})
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        await deadlines.read(request, 100)
    assert 0.4 <= time.monotonic() - started < 0.4 * 1.25 + 0.2
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # the request carries on: its 408 gets sent
    await asyncio.sleep(0.01)
    assert not deadlines._reading
    assert not deadlines._expired


async def test_a_read_cancelled_by_anything_else_is_cancelled_not_timed_out(deadlines: BodyDeadlines) -> None:
    reading = asyncio.create_task(deadlines.read(request_receiving(), 100))
    await asyncio.sleep(0.05)
    reading.cancel()  # e.g. the server shutting down
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert not deadlines._reading


async def test_reads_within_their_deadline_are_left_alone(deadlines: BodyDeadlines) -> None:
    async def slow_but_in_time(i: int) -> bytes:
        async def receive() -> dict[str, Any]:
            await asyncio.sleep(0.25)
            return {"type": "http.request", "body": b"%d" % i, "more_body": False}

        return await deadlines.read(Request(SCOPE, receive), 100)

    results = await asyncio.gather(*(slow_but_in_time(i) for i in range(50)))
    assert results == [b"%d" % i for i in range(50)]


async def test_a_client_that_goes_away_mid_body_is_not_a_server_error(deadlines: BodyDeadlines) -> None:
    request = request_receiving(
        {"type": "http.request", "body": b'{"a":', "more_body": True}, {"type": "http.disconnect"}
    )
    with pytest.raises(ClientDisconnected):
        await deadlines.read(request, 100)
    assert not deadlines._reading


async def test_a_shutdown_that_lands_with_the_deadline_still_cancels(deadlines: BodyDeadlines) -> None:
    reading = asyncio.create_task(deadlines.read(request_receiving(), 100))
    await asyncio.sleep(0)  # it waits in receive()
    deadlines._expired.add(reading)  # what the sweep does at the deadline
    reading.cancel()
    reading.cancel()  # and the server shuts down before the read has run again
    with pytest.raises(asyncio.CancelledError):
        await reading


def test_a_read_on_another_loop_than_the_sweeps_finds_its_task() -> None:
    """The sweep's loop is forgotten when it stops, and a read names its own task: a read on
    another loop (the next test client of one app, say) reads as before."""
    bodies = BodyDeadlines(0.4)

    async def sweep_briefly() -> None:
        sweeping = asyncio.create_task(bodies.sweep())
        await asyncio.sleep(0)
        sweeping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sweeping

    async def read() -> bytes:
        request = request_receiving({"type": "http.request", "body": b"{}", "more_body": False})
        return await bodies.read(request, 100)

    asyncio.run(sweep_briefly())
    assert asyncio.run(read()) == b"{}"
