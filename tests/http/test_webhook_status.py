"""GET /v1/webhooks: webhook delivery as `coupon-pool webhooks status` shows it (parked batches,
what the endpoint has not taken), for operators over the API; on a real Redis and a cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from coupon_pool.pool.deliveries import Deliveries
from coupon_pool.pool.feeds import Event
from coupon_pool.pool.keys import Keys, Layout
from coupon_pool.pool.store import Store
from support.factories import coupon_json
from support.redis_server import RedisServer
from tests.http.conftest import app_on

# Nothing listens on port 9 (discard): every POST is refused at once, so nothing is ever taken.
REFUSING = "http://hook-user:hook-password@127.0.0.1:9/hooks/coupons?token=hook-token"
SECRET = "whsec-test-0123456789abcdef"


@pytest.fixture(params=["redis-server", "cluster"])
async def hooked(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[tuple[httpx.AsyncClient, Store]]:
    """The app with WEBHOOK_URL set to an endpoint that refuses every POST, and a store of its pool."""
    given: dict[str, Any] = {"webhook_url": REFUSING, "webhook_secret": SECRET, "purge_interval_s": 86_400}
    async with app_on(request, redis_server, **given) as (http, redis, settings):
        yield http, Store(redis, Keys(settings.key_namespace), shards=settings.pool_shards)


async def webhooks(http: httpx.AsyncClient) -> dict[str, Any]:
    answer = await http.get("/v1/webhooks")
    assert answer.status_code == 200, answer.text
    shown: dict[str, Any] = answer.json()
    return shown


async def test_without_webhook_url_it_answers_not_configured_and_no_endpoint(
    pool: tuple[httpx.AsyncClient, Redis, Layout],
) -> None:
    http, _, _ = pool

    assert await webhooks(http) == {"configured": False, "endpoints": []}


async def test_a_parked_batch_shows_per_stream_and_the_url_without_its_credentials(
    hooked: tuple[httpx.AsyncClient, Store],
) -> None:
    http, store = hooked
    streams = store.feeds.streams
    before = await webhooks(http)
    assert before["configured"] is True
    [endpoint] = before["endpoints"]
    assert {k: endpoint[k] for k in ("endpoint", "url", "group", "parked", "parked_by_stream")} == {
        "endpoint": "default",
        "url": "http://127.0.0.1:9/hooks/coupons",  # no user, password or query: they may be credentials
        "group": "webhook.default",
        "parked": 0,
        "parked_by_stream": [0] * streams,
    }

    deliveries = Deliveries(store.ctx, "default")
    now_ms = round(time.time() * 1000)
    for i in range(2):
        event = Event(
            streams - 1, f"{now_ms}-{i}", f"{now_ms}-{i}", {"id": f"{now_ms}-{i}", "op": "allocate"}
        )
        await deliveries.park(streams - 1, [event], "HTTP 500", now_ms, bound=10)

    [endpoint] = (await webhooks(http))["endpoints"]
    assert endpoint["parked"] == 2
    assert endpoint["parked_by_stream"] == [0] * (streams - 1) + [2]


async def test_an_event_the_endpoint_has_not_taken_shows_in_the_backlog_with_its_age(
    hooked: tuple[httpx.AsyncClient, Store],
) -> None:
    http, _ = hooked
    assert (await http.post("/v1/coupons", json={"coupons": [coupon_json("HOOK-1")]})).status_code == 201

    async with asyncio.timeout(10):
        while True:  # the POSTs are refused: the upload's event stays pending, growing older
            [endpoint] = (await webhooks(http))["endpoints"]
            assert endpoint["undelivered"] is not None
            if (
                endpoint["pending"] + endpoint["undelivered"] >= 1
                and endpoint["oldest_undelivered_age_s"] > 0
            ):
                break
            await asyncio.sleep(0.05)
    assert endpoint["parked"] == 0  # the retry horizon (3 days by default) is far
