"""Body size limits: 413 body_too_large, before the body is read when its length is declared."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from coupon_pool.http.app import create_app
from coupon_pool.http.bodies import SMALL_BODY_BYTES
from coupon_pool.settings import Settings
from support.factories import coupon_json
from support.live_server import LiveServer
from support.rawhttp import read_answer
from support.redis_server import RedisServer

JSON = {"content-type": "application/json"}


@pytest.fixture
async def small_uploads(redis_server: RedisServer, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    """The app with uploads capped at 2,000 bytes."""
    app = create_app(Settings(redis_url=redis_server.url, max_body_bytes=2_000))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        yield http


async def test_a_small_route_refuses_a_large_body(client: httpx.AsyncClient) -> None:
    body = b'{"user_id": "u1", "padding": "' + b"x" * SMALL_BODY_BYTES + b'"}'
    response = await client.post("/v1/allocations", content=body, headers=JSON)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert (response.json()["code"], response.json()["limit"]) == ("body_too_large", SMALL_BODY_BYTES)


async def test_an_upload_over_max_body_bytes_is_refused_and_nothing_is_stored(
    small_uploads: httpx.AsyncClient, redis: Redis
) -> None:
    coupons = [coupon_json(f"L{i}") for i in range(30)]  # about 3,500 bytes
    response = await small_uploads.post("/v1/coupons", json={"coupons": coupons})
    assert response.status_code == 413
    assert response.json()["code"] == "body_too_large"
    assert await redis.dbsize() == 0
    fits = await small_uploads.post("/v1/coupons", json={"coupons": coupons[:5]})
    assert fits.status_code == 201


async def test_a_chunked_body_is_cut_off_at_the_limit(small_uploads: httpx.AsyncClient, redis: Redis) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"coupons": ['
        for i in range(1_000):  # far more than the limit, if it were all read
            sent += 1
            yield (b"," if i else b"") + httpx.Response(200, json=coupon_json(f"K{i}")).content

    response = await small_uploads.post("/v1/coupons", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert sent < 1_000  # the app stopped reading
    assert await redis.dbsize() == 0


async def test_a_content_length_that_is_not_a_number_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/allocations", content=b'{"user_id": "u1"}', headers={**JSON, "content-length": "17x"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_content_length"


def send_partly(port: int, path: str, length: int, start: bytes) -> tuple[bytes, float]:
    """Headers announcing ``length`` bytes, then only ``start`` of the body: the answer, and
    the seconds it took to come."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        started = time.monotonic()
        conn.sendall(
            b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), length, start)
        )
        return read_answer(conn), time.monotonic() - started


def test_a_declared_oversize_body_is_refused_before_it_is_sent(live_server: LiveServer) -> None:
    """Only the headers go out, announcing 1 GB: the answer comes without waiting for it."""
    answer, elapsed = send_partly(live_server.port, "/v1/coupons", 1_000_000_000, b'{"coupons": [')
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    assert b'"code":"body_too_large"' in rest
    assert elapsed < 5


def test_a_body_that_does_not_arrive_is_408_after_body_timeout(redis_server: RedisServer) -> None:
    """Headers, then a trickle that stops: the request is ended, not kept forever."""
    server = LiveServer(redis_server.url, BODY_TIMEOUT_S="1")
    try:
        answer, elapsed = send_partly(server.port, "/v1/allocations", 40, b'{"user')
    finally:
        server.stop()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"request_timeout"' in answer
    assert 0.9 < elapsed < 5
