"""The upload worker process: large uploads validated and stored off the event loop."""

from __future__ import annotations

import os
import pickle
import signal
from contextlib import suppress
from pathlib import Path

import httpx
import orjson
from redis.asyncio import Redis

from coupon_pool.errors import CouponError, ValidationFailed
from support import wait_until
from support.factories import coupon_json
from support.live_server import LiveServer
from support.redis_server import RedisServer

LARGE = 1_000  # coupons: a body well over the 64 KB that is validated in the serving process


async def test_a_large_upload_is_stored_by_the_worker(client: httpx.AsyncClient, redis: Redis) -> None:
    coupons = [coupon_json(f"W{i}") for i in range(LARGE)]
    response = await client.post("/v1/coupons", json={"coupons": coupons + coupons[:3]})
    assert response.status_code == 201
    assert response.json() == {
        "created": LARGE,
        "duplicates": ["W0", "W1", "W2"],
        "batch": response.json()["batch"],
    }
    assert await redis.hget("{cp}:stats", "STANDARD:created") == str(LARGE)


async def test_a_large_invalid_upload_is_refused_whole_naming_the_item(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    coupons = [coupon_json(f"W{i}") for i in range(LARGE)]
    coupons[777]["max_usages"] = 0
    response = await client.post("/v1/coupons", json={"coupons": coupons})
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"index": 777, "field": "max_usages", "message": "Input should be greater than or equal to 1"}
    ]
    assert await redis.dbsize() == 0


async def test_a_large_upload_with_a_repeated_field_is_refused_whole_naming_it(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    coupons = [coupon_json(f"W{i}") for i in range(LARGE)]
    body = orjson.dumps({"coupons": coupons}).replace(b'{"code":"W900"', b'{"code":"W900","code":"X"')
    response = await client.post("/v1/coupons", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"index": 900, "field": "code", "message": "appears more than once in the same object: send it once"}
    ]
    assert await redis.dbsize() == 0


async def test_a_lost_worker_answers_503_once_and_is_replaced(client: httpx.AsyncClient) -> None:
    body = {"coupons": [coupon_json(f"K{i}") for i in range(LARGE)]}
    assert (await client.post("/v1/coupons", json=body)).status_code == 201
    worker = client._transport.app.state.upload_worker  # type: ignore[attr-defined]
    for pid in list(worker._pool._processes):
        os.kill(pid, signal.SIGKILL)

    lost = await client.post("/v1/coupons", json=body)
    again = await client.post("/v1/coupons", json=body)

    assert lost.status_code == 503
    assert lost.json()["code"] == "upload_worker_lost"
    assert lost.headers["retry-after"] == "1"
    assert again.status_code == 201
    assert again.json()["created"] == 0  # all stored before: an upload can always be sent again


def test_errors_cross_the_process_boundary_whole() -> None:
    error = ValidationFailed("bad", errors=[{"field": "code", "message": "m"}], error_count=1)
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, CouponError)
    assert (type(copy), copy.detail, copy.extra) == (ValidationFailed, "bad", error.extra)


def children_of(pid: int) -> set[int]:
    """The processes whose parent is ``pid``, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command)"
            if int(fields[1]) == pid:
                found.add(int(stat.parent.name))
    return found


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_the_worker_of_a_killed_app_process_exits_too(redis_server: RedisServer, redis: Redis) -> None:
    server = LiveServer(redis_server.url)
    try:
        coupons = [coupon_json(f"O{i}") for i in range(LARGE)]
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            assert (await http.post("/v1/coupons", json={"coupons": coupons})).status_code == 201
        workers = children_of(server.process.pid)  # the upload worker (and multiprocessing's tracker)
        assert workers
    finally:
        server.process.kill()  # SIGKILL: the app cannot stop its worker itself
        server.process.wait(10)
    wait_until(lambda: not any(is_running(pid) for pid in workers), timeout=5)
