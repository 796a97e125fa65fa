"""POST /v1/coupons and Store.upload: bulk upload, validation, duplicates, chunking."""

from __future__ import annotations

import httpx
from redis.asyncio import Redis

from coupon_pool.http.app import create_app
from coupon_pool.models import CouponType
from coupon_pool.pool.store import Store
from coupon_pool.settings import Settings
from support.factories import coupon, coupon_json


async def test_upload_stores_every_new_coupon(store: Store) -> None:
    result = await store.upload([coupon(f"C{i}") for i in range(250)])  # three chunks of 100
    assert result.created == 250
    assert result.duplicates == []
    assert (await store.stats()).types[CouponType.STANDARD].created == 250


async def test_existing_and_repeated_codes_are_listed_as_duplicates_and_not_stored(store: Store) -> None:
    await store.upload([coupon("OLD", discount={"kind": "flat", "value": "1"})])
    result = await store.upload([coupon("OLD"), coupon("NEW"), coupon("NEW", type="FREE"), coupon("OTHER")])
    assert result.created == 2
    assert result.duplicates == ["OLD", "NEW"]
    assert (await store.get_coupon("OLD")).discount.value == "1"  # the first upload stands
    assert (await store.get_coupon("NEW")).type is CouponType.STANDARD


async def test_codes_are_unique_across_types_and_case_sensitive(store: Store) -> None:
    result = await store.upload([coupon("X", type="FREE"), coupon("X", type="MEGADEAL"), coupon("x")])
    assert result.created == 2
    assert result.duplicates == ["X"]


async def test_uploading_the_same_file_twice_counts_nothing_twice(client: httpx.AsyncClient) -> None:
    body = {"coupons": [coupon_json(f"F{i}", type="FREE") for i in range(10)]}
    first = await client.post("/v1/coupons", json=body)
    second = await client.post("/v1/coupons", json=body)
    made = first.json()["batch"]  # no batch named: each upload makes its own
    assert first.json() == {"created": 10, "duplicates": [], "batch": made}
    assert second.json() == {
        "created": 0,
        "duplicates": [f"F{i}" for i in range(10)],
        "batch": second.json()["batch"],
    }
    assert second.json()["batch"] != made
    stats = (await client.get("/v1/stats")).json()
    assert stats["types"]["FREE"]["created"] == 10
    assert stats["types"]["FREE"]["available"] == 10


async def test_upload_answers_201_with_created_and_duplicates(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/coupons", json={"coupons": [coupon_json("A"), coupon_json("A")]})
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"created": 1, "duplicates": ["A"], "batch": response.json()["batch"]}


async def test_type_defaults_to_standard_and_max_usages_to_one(client: httpx.AsyncClient) -> None:
    await client.post("/v1/coupons", json={"coupons": [coupon_json("D")]})
    body = (await client.get("/v1/coupons/D")).json()
    assert body["type"] == "STANDARD"
    assert body["max_usages"] == 1


async def test_discounts_are_kept_exactly(client: httpx.AsyncClient) -> None:
    coupons = [
        coupon_json("FLAT", discount={"kind": "flat", "value": "0.10"}),
        coupon_json("BIG", discount={"kind": "flat", "value": "999999999999.9999"}),
        coupon_json("INT", discount={"kind": "flat", "value": 7}),
        coupon_json("PCT", discount={"kind": "percent", "value": 15}),
        coupon_json("HALF", discount={"kind": "percent", "value": "12.5"}),
    ]
    assert (await client.post("/v1/coupons", json={"coupons": coupons})).status_code == 201
    got = {c["code"]: (await client.get(f"/v1/coupons/{c['code']}")).json()["discount"] for c in coupons}
    assert got == {
        "FLAT": {"kind": "flat", "value": "0.10"},
        "BIG": {"kind": "flat", "value": "999999999999.9999"},
        "INT": {"kind": "flat", "value": "7"},
        "PCT": {"kind": "percent", "value": 15},
        "HALF": {"kind": "percent", "value": "12.5"},
    }


async def test_one_invalid_item_refuses_the_whole_upload_and_names_it(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    coupons = [coupon_json("GOOD"), coupon_json("BAD", max_usages=0)]
    response = await client.post("/v1/coupons", json={"coupons": coupons})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "validation_error"
    assert body["errors"] == [
        {"index": 1, "field": "max_usages", "message": "Input should be greater than or equal to 1"}
    ]
    assert await redis.dbsize() == 0


async def test_each_field_rule_is_enforced(client: httpx.AsyncClient) -> None:
    bad = [
        coupon_json("a b"),  # code charset
        coupon_json("x" * 65),  # code length
        coupon_json("T", type="GOLD"),
        coupon_json("F", discount={"kind": "flat", "value": "0"}),
        coupon_json("G", discount={"kind": "flat", "value": 12.5}),  # floats are not exact
        coupon_json("H", discount={"kind": "flat", "value": "1.23456"}),
        coupon_json("P", discount={"kind": "percent", "value": 101}),
        coupon_json("Q", discount={"kind": "percent", "value": 0}),
        coupon_json("K", discount={"kind": "bogus", "value": 1}),
        coupon_json("E", expires_in=-5),
        {**coupon_json("Z"), "expires_at": "2099-01-01T00:00:00"},  # no timezone
        coupon_json("M", max_usages=1_000_001),
        {**coupon_json("U"), "colour": "red"},
    ]
    response = await client.post("/v1/coupons", json={"coupons": bad})
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert [(e["index"], e["field"]) for e in errors] == [
        (0, "code"), (1, "code"), (2, "type"), (3, "discount.value"), (4, "discount.value"),
        (5, "discount.value"), (6, "discount.value"), (7, "discount.value"), (8, "discount"),
        (9, "expires_at"), (10, "expires_at"), (11, "max_usages"), (12, "colour"),
    ]  # fmt: skip


async def test_at_most_100_errors_are_listed(client: httpx.AsyncClient) -> None:
    coupons = [coupon_json(f"C{i}", max_usages=0) for i in range(150)]
    body = (await client.post("/v1/coupons", json={"coupons": coupons})).json()
    assert len(body["errors"]) == 100
    assert body["error_count"] == 150


async def test_more_than_50000_coupons_is_413(client: httpx.AsyncClient, redis: Redis) -> None:
    one = coupon_json("C")
    response = await client.post("/v1/coupons", json={"coupons": [one] * 50_001})
    assert response.status_code == 413
    assert response.json()["code"] == "too_many_coupons"
    assert await redis.dbsize() == 0


async def test_a_50000_coupon_upload_is_stored_whole_in_chunked_script_calls(
    redis: Redis, settings: Settings
) -> None:
    # No sweep of due holds (SETTLE_INTERVAL_S=0): its calls would be counted with the upload's.
    app = create_app(Settings(redis_url=settings.redis_url, settle_interval_s=0))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        coupons = [coupon_json(f"BULK-{i:05d}", type=("FREE", "STANDARD")[i % 2]) for i in range(50_000)]
        await redis.config_resetstat()
        response = await client.post("/v1/coupons", json={"coupons": coupons})
        assert response.json() == {"created": 50_000, "duplicates": [], "batch": response.json()["batch"]}
        # One script call per 100 coupons (the default chunk), so others are served in between,
        # and one that opens the upload's batch.
        assert (await redis.info("commandstats"))["cmdstat_fcall"]["calls"] == 501
        stats = (await client.get("/v1/stats")).json()
    assert stats["totals"]["created"] == 50_000
    assert stats["types"]["FREE"]["available"] == 25_000
    assert await redis.zcard("{cp}:avail:STANDARD") == 25_000
    assert not await redis.exists("{cp}:exhausted")  # only coupons with no free usage go there
