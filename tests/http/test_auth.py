"""API keys: admin and client roles, 401 unauthenticated, 403 forbidden, open health checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from coupon_pool.http.app import create_app
from coupon_pool.http.auth import key_id
from coupon_pool.settings import Settings, SettingsError
from support.factories import coupon_json
from support.redis_server import RedisServer

ADMIN = "admin-key-0123456789abcdef"
CLIENT = "client-key-0123456789abcdef"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def guarded(redis_server: RedisServer, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    """The app with one admin and one client key."""
    app = create_app(Settings(redis_url=redis_server.url, admin_keys=(ADMIN,), client_keys=(CLIENT,)))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        yield http


async def upload(http: httpx.AsyncClient, key: str, *codes: str) -> httpx.Response:
    return await http.post(
        "/v1/coupons", json={"coupons": [coupon_json(c) for c in codes]}, headers=bearer(key)
    )


async def test_an_admin_key_may_do_everything(guarded: httpx.AsyncClient) -> None:
    assert (await upload(guarded, ADMIN, "A1", "A2")).status_code == 201
    allocated = await guarded.post("/v1/allocations", json={"user_id": "u1"}, headers=bearer(ADMIN))
    assert allocated.status_code == 201
    for path in (
        "/v1/audit",
        "/v1/webhooks",
        "/v1/stats",
        "/metrics",
        f"/v1/coupons/{allocated.json()['code']}",
    ):
        assert (await guarded.get(path, headers=bearer(ADMIN))).status_code == 200, path
    assert (await guarded.post("/v1/purge", headers=bearer(ADMIN))).status_code == 200


async def test_a_client_key_may_allocate_redeem_and_read_but_not_administer(
    guarded: httpx.AsyncClient,
) -> None:
    await upload(guarded, ADMIN, "C1")
    allocated = await guarded.post("/v1/allocations", json={"user_id": "u1"}, headers=bearer(CLIENT))
    assert allocated.status_code == 201
    redeemed = await guarded.post(
        "/v1/redemptions", json={"code": "C1", "user_id": "u1"}, headers=bearer(CLIENT)
    )
    assert redeemed.status_code == 201
    for path in ("/v1/stats", "/metrics", "/v1/coupons/C1"):
        assert (await guarded.get(path, headers=bearer(CLIENT))).status_code == 200, path

    for response in (
        await upload(guarded, CLIENT, "C2"),
        await guarded.post("/v1/purge", headers=bearer(CLIENT)),
        await guarded.get("/v1/audit", headers=bearer(CLIENT)),
        await guarded.get("/v1/webhooks", headers=bearer(CLIENT)),
    ):
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "forbidden"
    assert (await guarded.get("/v1/coupons/C2", headers=bearer(ADMIN))).status_code == 404  # not stored


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-configured-key-at-all"},
        {"Authorization": f"Basic {ADMIN}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {ADMIN}x"},
        {"Authorization": f"Bearer {ADMIN[:-1]}"},
    ],
    ids=["none", "unknown", "basic", "empty", "longer", "shorter"],
)
async def test_no_valid_key_is_401_unauthenticated(
    guarded: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for response in (
        await guarded.post("/v1/allocations", json={"user_id": "u1"}, headers=headers),
        await guarded.get("/v1/stats", headers=headers),
        await guarded.post("/v1/coupons", json={"coupons": []}, headers=headers),
    ):
        assert response.status_code == 401
        assert response.json()["code"] == "unauthenticated"
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_health_checks_and_the_api_document_stay_open(guarded: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert (await guarded.get(path)).status_code == 200, path


async def test_the_api_document_names_the_key_each_route_needs(guarded: httpx.AsyncClient) -> None:
    document = (await guarded.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    paths = document["paths"]
    assert paths["/healthz"]["get"]["security"] == []
    assert paths["/v1/allocations"]["post"]["security"] == [{"apiKey": []}]
    assert "401" in paths["/v1/allocations"]["post"]["responses"]
    assert "403" not in paths["/v1/allocations"]["post"]["responses"]
    assert {"401", "403"} <= set(paths["/v1/coupons"]["post"]["responses"])


async def test_the_log_line_names_the_key_by_id_never_the_key(
    guarded: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    await guarded.get("/v1/stats", headers=bearer(CLIENT))
    await asyncio.sleep(0)  # log lines go out at the end of the event-loop turn
    out = capsys.readouterr().out
    [line] = [orjson.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert line["key_id"] == key_id(CLIENT)
    assert CLIENT not in out


async def test_without_keys_every_route_is_open_and_the_start_warns(
    redis_server: RedisServer, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(Settings(redis_url=redis_server.url))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        await asyncio.sleep(0)  # log lines go out at the end of the event-loop turn
        warning = [orjson.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
        assert [w["event"] for w in warning if w.get("level") == "warning"] == ["auth_disabled"]
        assert (await http.post("/v1/purge")).status_code == 200


def settings_from(**env: str) -> Settings:
    return Settings.from_env(env)


def test_keys_come_from_comma_separated_variables() -> None:
    settings = settings_from(
        COUPON_POOL_ADMIN_KEYS=f" {ADMIN} ,", COUPON_POOL_CLIENT_KEYS=f"{CLIENT},{CLIENT}-second"
    )
    assert settings.admin_keys == (ADMIN,)
    assert settings.client_keys == (CLIENT, f"{CLIENT}-second")
    assert ADMIN not in repr(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"COUPON_POOL_ADMIN_KEYS": "short"}, "COUPON_POOL_ADMIN_KEYS: key 1 must be 16-256"),
        ({"COUPON_POOL_CLIENT_KEYS": f"{CLIENT},with space inside it"}, "key 2 must be"),
        ({"COUPON_POOL_CLIENT_KEYS": "é" * 20}, "COUPON_POOL_CLIENT_KEYS: key 1"),
        ({"COUPON_POOL_ADMIN_KEYS": ADMIN, "COUPON_POOL_CLIENT_KEYS": ADMIN}, "in both"),
    ],
)
def test_unusable_keys_stop_the_start(env: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as refused:
        settings_from(**env)
    for key in env.values():
        assert key not in str(refused.value)  # a key is never echoed
