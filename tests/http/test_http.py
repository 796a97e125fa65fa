"""The HTTP surface: problem+json errors, content types, health, readiness and OpenAPI."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from coupon_pool.http.app import create_app
from coupon_pool.results import Allocation, Coupon, Problem, Redemption, Stats, UploadResult
from coupon_pool.settings import Settings
from support import free_port
from support.factories import coupon_json


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = Problem.model_validate(response.json())
    assert (body.status, body.code, body.type) == (status, code, f"urn:coupon-pool:problem:{code}")
    assert body.title
    assert body.detail


async def test_malformed_json_is_400_invalid_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/allocations", content=b'{"user_id": ', headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "invalid_json")


async def test_a_body_that_is_not_json_typed_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/allocations", content=b'{"user_id": "u"}')
    assert_problem(response, 415, "unsupported_media_type")


async def test_of_repeated_content_types_the_first_counts_even_when_empty(client: httpx.AsyncClient) -> None:
    """As a proxy reading the first would: an empty first Content-Type is no JSON type."""
    headers = [("content-type", ""), ("content-type", "application/json")]
    response = await client.post("/v1/allocations", content=b'{"user_id": "u"}', headers=headers)
    assert_problem(response, 415, "unsupported_media_type")
    headers = [("content-type", "application/json"), ("content-type", "text/plain")]
    response = await client.post("/v1/allocations", content=b'{"user_id": "u"}', headers=headers)
    assert_problem(response, 409, "pool_empty")


async def test_json_content_type_with_charset_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/allocations",
        content=b'{"user_id": "u"}',
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert_problem(response, 409, "pool_empty")


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"null", b"42"])
async def test_json_that_is_not_an_object_is_422(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(
        "/v1/allocations", content=body, headers={"content-type": "application/json"}
    )
    assert_problem(response, 422, "validation_error")


async def test_unknown_route_is_404_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v2/nothing"), 404, "not_found")


async def test_wrong_method_is_405_problem_with_the_allowed_methods(client: httpx.AsyncClient) -> None:
    response = await client.delete("/v1/stats")
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, HEAD"  # RFC 9110: Allow is required


async def test_unknown_coupon_is_404_coupon_not_found(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/coupons/NOPE"), 404, "coupon_not_found")


async def test_a_code_outside_the_charset_is_refused_before_redis(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/coupons/%7Bcp%7D:stats"), 422, "validation_error")


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = (await client.get("/readyz")).json()
    assert ready["status"] == "ready"
    assert ready["memory"]["used_bytes"] > 0
    assert ready["memory"]["max_bytes"] == 0  # the test Redis has no maxmemory
    assert ready["memory"]["uploads_stop_at_bytes"] is None


async def test_redis_unreachable_is_503_store_unavailable() -> None:
    app = create_app(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        assert (await http.get("/healthz")).status_code == 200
        assert_problem(await http.get("/readyz"), 503, "store_unavailable")
        assert_problem(await http.post("/v1/allocations", json={"user_id": "u"}), 503, "store_unavailable")


async def test_responses_match_their_documented_models(client: httpx.AsyncClient) -> None:
    def check(response: httpx.Response, model: type[Any]) -> None:
        assert response.status_code in (200, 201), response.text
        TypeAdapter(model).validate_json(response.content, strict=False)

    check(await client.post("/v1/coupons", json={"coupons": [coupon_json("C")]}), UploadResult)
    check(await client.get("/v1/coupons/C"), Coupon)
    check(await client.post("/v1/allocations", json={"user_id": "u"}), Allocation)
    check(await client.post("/v1/redemptions", json={"code": "C", "user_id": "u"}), Redemption)
    check(await client.get("/v1/stats"), Stats)


async def test_openapi_describes_every_route_and_body(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/v1/coupons", "/v1/coupons/{code}", "/v1/allocations", "/v1/redemptions", "/v1/releases",
        "/v1/rollbacks", "/v1/validations", "/v1/users/{user_id}/coupons", "/v1/stats",
        "/v1/levels", "/v1/megadeal", "/v1/webhooks",
        "/v1/purge", "/v1/audit", "/metrics", "/healthz", "/readyz", "/openapi.json", "/v1/batches",
        "/v1/batches/{batch}", "/v1/batches/{batch}/disable", "/v1/batches/{batch}/enable",
        "/v1/coupons/{code}/disable", "/v1/coupons/{code}/enable", "/v1/batches/{batch}/coupons",
    }  # fmt: skip
    assert set(doc["paths"]["/v1/batches"]) == {"get", "post"}
    assert set(doc["paths"]["/v1/batches/{batch}"]) == {"get", "patch"}
    assert "/dashboard" not in doc["paths"]  # a page, not an API operation
    upload = doc["paths"]["/v1/coupons"]["post"]
    assert upload["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("UploadRequest")
    assert set(upload["responses"]) == {
        "201", "400", "401", "403", "404", "405", "408", "409", "413", "415", "422", "429", "431", "500",
        "503", "507",
    }  # fmt: skip
    schemas = set(doc["components"]["schemas"])
    assert {"CouponIn", "FlatDiscount-Input", "PercentDiscount-Output", "Problem"} <= schemas
    audit = doc["paths"]["/v1/audit"]["get"]
    assert {p["name"]: p["in"] for p in audit["parameters"]} == {"limit": "query", "after": "query"}
    assert "text/plain" in next(iter(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]))
