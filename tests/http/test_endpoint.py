"""An endpoint answers every exception Starlette's exception middleware would answer, the
same way, when it is reached without the router (routing.Shortcuts); and 405 lists the
allowed methods in one order."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request

from coupon_pool.http.auth import ApiKeys
from coupon_pool.http.bodies import BodyDeadlines
from coupon_pool.http.inputs import Call, Services
from coupon_pool.http.problems import on_http_exception
from coupon_pool.http.routing import Operation


async def raises_not_found(call: Call) -> None:
    raise HTTPException(status_code=404)


async def test_an_http_exception_is_answered_as_problem_json() -> None:
    op = Operation(method="GET", path="/thing", handler=raises_not_found, summary="", tag="t", role=None)
    services = Services(max_uploads=1, max_body_bytes=1, idempotency_ttl_ms=1, deadlines=BodyDeadlines(1))
    endpoint = op.endpoint(services, ApiKeys([], []))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/thing", "headers": [], "query_string": b""}
    await endpoint(scope, receive, send)
    assert sent[0]["status"] == 404
    assert (b"content-type", b"application/problem+json") in sent[0]["headers"]
    assert orjson.loads(sent[1]["body"])["code"] == "not_found"


async def test_the_allowed_methods_are_listed_in_one_order_whatever_the_hash_seed() -> None:
    """Starlette lists a route's methods from a set, in an order that changes from process to
    process; the answer sorts them, so every worker says the same."""
    scope = {"type": "http", "method": "POST", "path": "/v1/stats", "headers": [], "query_string": b""}
    for given in ("HEAD, GET", "GET, HEAD"):
        response = await on_http_exception(Request(scope), HTTPException(405, headers={"Allow": given}))
        assert response.headers["allow"] == "GET, HEAD"
