"""Codes cannot be enumerated: a caller's lookups that fail (a code that does not exist, or
is not the user's) spend a budget kept in Redis; past it they answer 429
too_many_failed_lookups, while other callers, and the caller's own successes, go on."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from coupon_pool.http.app import create_app
from coupon_pool.settings import Settings
from support.factories import coupon_json
from support.redis_server import RedisServer

ADMIN = "admin-key-0123456789abcdef"
PROBER = "client-key-prober-0123456789"
HONEST = "client-key-honest-0123456789"
# A slow refill (a token every 100 s), so nothing refills while a test runs.
RATE, BURST = 0.01, 100


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def http(redis_server: RedisServer, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        redis_url=redis_server.url,
        admin_keys=(ADMIN,),
        client_keys=(PROBER, HONEST),
        failed_lookups_per_s=RATE,
        failed_lookup_burst=BURST,
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        coupons = [coupon_json(f"REAL-{i}", max_usages=1000) for i in range(20)]
        assert (await client.post("/v1/coupons", json={"coupons": coupons}, headers=bearer(ADMIN))).is_success
        yield client


async def redeem(http: httpx.AsyncClient, key: str, code: str, user: str) -> httpx.Response:
    return await http.post("/v1/redemptions", json={"code": code, "user_id": user}, headers=bearer(key))


async def test_a_thousand_guesses_at_once_are_refused_past_the_budget_and_others_go_on(
    http: httpx.AsyncClient,
) -> None:
    answers = await asyncio.gather(*(redeem(http, PROBER, f"GUESS-{i:05d}", "attacker") for i in range(1000)))
    statuses = Counter(a.status_code for a in answers)
    assert statuses == {404: BURST, 429: 1000 - BURST}
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["code"] == "too_many_failed_lookups"
    assert 1 <= int(refused.headers["Retry-After"]) <= 100  # the next token, at one per 100 s

    # Another caller's allocations and redemptions all succeed meanwhile.
    for user in ("alice", "bob", "carol"):
        allocated = await http.post("/v1/allocations", json={"user_id": user}, headers=bearer(HONEST))
        assert allocated.status_code == 201
        assert (await redeem(http, HONEST, allocated.json()["code"], user)).status_code == 201
    # The prober's own successes are not refused either: a redemption of what it holds.
    held = await http.post("/v1/allocations", json={"user_id": "p"}, headers=bearer(PROBER))
    mine = held.json()["code"]
    assert (await redeem(http, PROBER, mine, "p")).status_code == 201
    # Its failures stay refused, whichever the kind: not the user's, or no such code.
    for code in (mine, "REAL-1", "NO-SUCH"):
        assert (await redeem(http, PROBER, code, "q")).status_code == 429
    metrics = (await http.get("/metrics", headers=bearer(ADMIN))).text
    assert f"coupon_pool_failed_lookups_refused_total {float(1000 - BURST + 3)}" in metrics


async def test_reading_a_coupon_is_refused_whatever_it_finds_once_the_budget_is_spent(
    http: httpx.AsyncClient,
) -> None:
    # A successful read shows that a code exists: past the budget, it is refused too.
    for i in range(BURST):
        assert (await http.get(f"/v1/coupons/NOPE-{i}", headers=bearer(PROBER))).status_code == 404
    answers = await asyncio.gather(
        http.get("/v1/coupons/REAL-1", headers=bearer(PROBER)),
        http.get("/v1/coupons/NOPE-X", headers=bearer(PROBER)),
    )
    assert [a.status_code for a in answers] == [429, 429]
    assert (await http.get("/v1/coupons/REAL-1", headers=bearer(HONEST))).status_code == 200


def test_the_budget_defaults_are_those_readme_documents() -> None:
    settings = Settings()
    assert (settings.failed_lookups_per_s, settings.failed_lookup_burst) == (10.0, 100)


async def test_validations_that_fail_spend_the_same_budget_and_valid_ones_never_do(
    http: httpx.AsyncClient,
) -> None:
    allocated = await http.post("/v1/allocations", json={"user_id": "shopper"}, headers=bearer(HONEST))
    code = allocated.json()["code"]

    async def validate(guess: str) -> httpx.Response:
        return await http.post(
            "/v1/validations", json={"code": guess, "user_id": "shopper"}, headers=bearer(PROBER)
        )

    answers = await asyncio.gather(*(validate(f"GUESS-{i:05d}") for i in range(BURST + 50)))
    assert Counter(a.status_code for a in answers) == {200: BURST, 429: 50}
    assert {a.json()["code"] for a in answers} == {"coupon_not_found", "too_many_failed_lookups"}
    # A redemption guess of the same caller is refused too: one budget.
    assert (await redeem(http, PROBER, "GUESS-X", "shopper")).status_code == 429
    # A validation that holds is no failed lookup: answered past the budget.
    valid = await validate(code)
    assert (valid.status_code, valid.json()["valid"]) == (200, True)
