"""GET /metrics: Prometheus text with request, coupon and MEGADEAL gate metrics."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from coupon_pool.http.app import create_app
from coupon_pool.http.metrics import LatencyHistogram
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.megadeal import MegadealGate
from coupon_pool.pool.store import Store
from coupon_pool.settings import MegadealLimits, Settings
from support.factories import coupon_json


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_metrics_count_and_time_requests_per_route_and_status(client: httpx.AsyncClient) -> None:
    await client.post("/v1/coupons", json={"coupons": [coupon_json("M1"), coupon_json("M2")]})
    for user in ("a", "b", "c"):
        await client.post("/v1/allocations", json={"user_id": user})
    await client.get("/v1/coupons/M1")

    samples = await scrape(client)

    def requests(route: str, status: str, method: str = "POST") -> float:
        labels = (("method", method), ("route", route), ("status", status))
        return samples[("coupon_pool_http_request_duration_seconds_count", labels)]

    assert requests("/v1/allocations", "201") == 2
    assert requests("/v1/allocations", "409") == 1
    assert requests("/v1/coupons/{code}", "200", "GET") == 1
    labels = (("le", "+Inf"), ("method", "POST"), ("route", "/v1/allocations"), ("status", "201"))
    assert samples[("coupon_pool_http_request_duration_seconds_bucket", labels)] == 2


async def test_metrics_show_coupon_counters_by_type(client: httpx.AsyncClient) -> None:
    coupons = [coupon_json("F1", type="FREE", max_usages=2), coupon_json("S1")]
    await client.post("/v1/coupons", json={"coupons": coupons})
    await client.post("/v1/allocations", json={"user_id": "a", "type": "FREE"})
    await client.post("/v1/redemptions", json={"code": "F1", "user_id": "a"})

    samples = await scrape(client)

    def coupons_of(name: str, coupon_type: str) -> float:
        return samples[(f"coupon_pool_coupons_{name}", (("type", coupon_type),))]

    counters = ("created_total", "allocated_total", "used_total", "purged_total", "available")
    assert [coupons_of(n, "FREE") for n in counters] == [1, 1, 1, 0, 1]
    assert coupons_of("available", "STANDARD") == 1
    assert coupons_of("created_total", "MEGADEAL") == 0


async def test_metrics_show_the_megadeal_gate(settings: Settings, redis: Redis) -> None:
    """One slot held elsewhere, one request of this process waiting for it, one idle gate."""
    app = create_app(dataclasses.replace(settings, megadeal_max_concurrent=1, megadeal_max_wait_s=5))
    holder = MegadealGate(redis, Keys("cp"), MegadealLimits(max_concurrent=1))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        body = {"coupons": [coupon_json(f"MD{i}", type="MEGADEAL") for i in range(3)]}
        await http.post("/v1/coupons", json=body)
        async with holder.slot("holder"):
            waiter = asyncio.create_task(
                http.post("/v1/allocations", json={"user_id": "w", "type": "MEGADEAL"})
            )
            await asyncio.sleep(0.3)
            held = await scrape(http)
        served = await waiter
        after = await scrape(http)
    assert served.status_code == 201
    gauges = ("slots_in_use", "queued", "waiting")
    assert [held[(f"coupon_pool_megadeal_{n}", ())] for n in gauges] == [1, 1, 1]
    assert [after[(f"coupon_pool_megadeal_{n}", ())] for n in gauges] == [0, 0, 0]


def test_the_latency_histogram_renders_as_prometheus_clients_histogram_would() -> None:
    """The same exposition text, sample for sample, as prometheus_client's Histogram with the
    same name, labels and buckets given the same observations (bounds included: le is <=)."""
    buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
    name, doc, labels = (
        "coupon_pool_http_request_duration_seconds",
        "Time to answer",
        ("method", "route", "status"),
    )
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = Histogram(name, doc, labels, buckets=buckets, registry=theirs_registry)
    ours = LatencyHistogram(name, doc, labels, buckets)
    ours_registry.register(ours)
    observations = [0.0, 0.0005, 0.001, 0.0010001, 0.0025, 0.003, 0.7, 15.0, 15.5, 300.0, *buckets]
    for i, seconds in enumerate(observations):
        series = ("POST", "/v1/allocations", 201) if i % 3 else ("GET", "/v1/stats", 503)
        theirs.labels(*(str(v) for v in series)).observe(seconds)
        ours.observe(series, seconds)
    assert generate_latest(ours_registry) == generate_latest(theirs_registry)
    assert b'le="+Inf"' in generate_latest(ours_registry)


async def test_metrics_show_each_consumer_groups_backlog_and_the_drops(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    store = Store(redis, Keys("cp"))
    await store.feeds.create("crm", "now", "events")
    await client.post("/v1/coupons", json={"coupons": [coupon_json("F1", max_usages=5)]})
    for user in ("a", "b", "c"):
        await client.post("/v1/allocations", json={"user_id": user})
    await store.feeds.read("crm", "c", 0, 2)  # two handed out, not acknowledged

    samples = await scrape(client)

    assert samples[("coupon_pool_feed_pending", (("group", "crm"),))] == 2
    assert samples[("coupon_pool_feed_oldest_unacknowledged_seconds", (("group", "crm"),))] >= 0
    assert samples[("coupon_pool_feed_dropped_total", ())] == 0
    await redis.set("{cp}:audit:dropped", 7)  # as feed_trim.lua counts them
    assert (await scrape(client))[("coupon_pool_feed_dropped_total", ())] == 7
