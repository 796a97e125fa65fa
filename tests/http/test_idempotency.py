"""Idempotency-Key on the POST routes: one effect per key, the first answer replayed."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from coupon_pool.errors import StoreFull
from coupon_pool.http.app import create_app
from coupon_pool.models import CouponType
from coupon_pool.pool.keyed import Idempotency, fingerprint
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from coupon_pool.pool.upkeep import Memory
from coupon_pool.settings import Settings
from coupon_pool.tools.check import check
from support.factories import coupon, coupon_json
from support.live_server import LiveServer
from support.redis_server import RedisServer

ADMIN, CLIENT = "admin-key-0123456789abcdef", "client-key-0123456789abcdef"


def keyed(key: str, api_key: str | None = None) -> dict[str, str]:
    headers = {"Idempotency-Key": key}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


async def stock(http: httpx.AsyncClient, n: int = 5, **kwargs: Any) -> None:
    coupons = [coupon_json(f"K{i}", **kwargs) for i in range(n)]
    assert (
        await http.post("/v1/coupons", json={"coupons": coupons}, headers=_admin(http))
    ).status_code == 201


def _admin(http: httpx.AsyncClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


async def test_a_retried_allocation_gets_the_first_answer_and_no_second_coupon(
    client: httpx.AsyncClient,
) -> None:
    await stock(client)
    first = await client.post("/v1/allocations", json={"user_id": "u"}, headers=keyed("order-1"))
    again = await client.post(
        "/v1/allocations", json={"type": "STANDARD", "user_id": "u"}, headers=keyed("order-1")
    )
    assert first.status_code == again.status_code == 201
    assert again.content == first.content  # spacing and defaults do not make another request
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert (await client.get("/v1/stats")).json()["types"]["STANDARD"]["allocated"] == 1
    other = await client.post("/v1/allocations", json={"user_id": "u"}, headers=keyed("order-2"))
    assert other.json()["code"] != first.json()["code"]


async def test_every_keyed_route_replays_and_refuses_a_reused_key(client: httpx.AsyncClient) -> None:
    await stock(client, max_usages=2)
    code = (await client.post("/v1/allocations", json={"user_id": "u"})).json()["code"]
    for path, body in [
        ("/v1/redemptions", {"code": code, "user_id": "u"}),
        ("/v1/rollbacks", {"code": code, "user_id": "u"}),
        ("/v1/releases", {"code": code, "user_id": "u"}),
        ("/v1/coupons", {"coupons": [coupon_json("NEW1")]}),
    ]:
        first = await client.post(path, json=body, headers=keyed(f"k{path}"))
        again = await client.post(path, json=body, headers=keyed(f"k{path}"))
        assert (first.status_code, again.status_code) == (201, 201), path
        assert (again.content, again.headers["Idempotent-Replayed"]) == (first.content, "true")
        reused = await client.post("/v1/allocations", json={"user_id": "x"}, headers=keyed(f"k{path}"))
        assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")
    stats = (await client.get("/v1/stats")).json()["types"]["STANDARD"]
    assert (stats["used"], stats["rolled_back"], stats["released"], stats["created"]) == (0, 1, 1, 6)


async def test_a_stored_refusal_is_replayed_and_a_validation_error_is_not_stored(
    client: httpx.AsyncClient,
) -> None:
    refused = await client.post("/v1/allocations", json={"user_id": "u"}, headers=keyed("early"))
    assert refused.json()["code"] == "pool_empty"
    await stock(client)
    again = await client.post("/v1/allocations", json={"user_id": "u"}, headers=keyed("early"))
    assert (again.status_code, again.content, again.headers["Idempotent-Replayed"]) == (
        409, refused.content, "true"
    )  # fmt: skip
    invalid = await client.post("/v1/allocations", json={"user_id": ""}, headers=keyed("fixed"))
    assert invalid.status_code == 422
    assert (
        await client.post("/v1/allocations", json={"user_id": "u"}, headers=keyed("fixed"))
    ).status_code == 201


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"Idempotency-Key": "x" * 256}, "header.Idempotency-Key"),
        ({"Idempotency-Key": "has space"}, "header.Idempotency-Key"),
        ([("Idempotency-Key", "a"), ("Idempotency-Key", "b")], "header.Idempotency-Key"),
    ],
)
async def test_a_bad_key_is_a_422(client: httpx.AsyncClient, headers: Any, field: str) -> None:
    await stock(client)
    response = await client.post("/v1/allocations", json={"user_id": "u"}, headers=headers)
    assert (response.status_code, response.json()["errors"][0]["field"]) == (422, field)


async def test_keys_are_scoped_to_the_api_key(redis: Redis, settings: Settings) -> None:
    scoped = Settings(redis_url=settings.redis_url, admin_keys=(ADMIN,), client_keys=(CLIENT,))
    app = create_app(scoped)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        await stock(http)
        as_admin = await http.post("/v1/allocations", json={"user_id": "u"}, headers=keyed("same", ADMIN))
        as_client = await http.post("/v1/allocations", json={"user_id": "u"}, headers=keyed("same", CLIENT))
        assert (as_admin.status_code, as_client.status_code) == (201, 201)
        assert "Idempotent-Replayed" not in as_client.headers
        assert as_admin.json()["code"] != as_client.json()["code"]


async def test_two_identical_keyed_requests_at_once_have_one_effect(
    live_server: LiveServer, redis: Redis
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        await stock(http, max_usages=100)
        for round_ in range(20):
            body = {"user_id": f"twin{round_}"}
            answers = await asyncio.gather(
                *(http.post("/v1/allocations", json=body, headers=keyed(f"twin-{round_}")) for _ in range(2))
            )
            assert [a.status_code for a in answers] == [201, 201]
            assert answers[0].content == answers[1].content
            assert sorted(a.headers.get("Idempotent-Replayed", "") for a in answers) == ["", "true"]
        assert (await http.get("/v1/stats")).json()["types"]["STANDARD"]["allocated"] == 20


async def test_a_keyed_megadeal_request_waiting_makes_its_twin_wait_then_replays(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    app = LiveServer(redis.url, MEGADEAL_RATE_PER_S="1")
    try:
        async with httpx.AsyncClient(base_url=app.url, timeout=20) as http:
            await stock(http, type="MEGADEAL", max_usages=10)
            body = {"user_id": "m", "type": "MEGADEAL"}
            assert (await http.post("/v1/allocations", json={**body, "user_id": "first"})).status_code == 201
            waiting = asyncio.create_task(http.post("/v1/allocations", json=body, headers=keyed("mega")))
            await asyncio.sleep(0.3)  # it waits for the rate window (1 a second)
            twin = await http.post("/v1/allocations", json=body, headers=keyed("mega"))
            assert (twin.status_code, twin.json()["code"]) == (409, "idempotency_key_in_progress")
            assert int(twin.headers["Retry-After"]) >= 1
            first = await waiting
            assert first.status_code == 201
            again = await http.post("/v1/allocations", json=body, headers=keyed("mega"))
            assert (again.status_code, again.content, again.headers["Idempotent-Replayed"]) == (
                201, first.content, "true"
            )  # fmt: skip
            assert (await http.get("/v1/stats")).json()["types"]["MEGADEAL"]["allocated"] == 2
    finally:
        app.stop()
        redis.stop()


async def test_an_upload_retried_after_a_partial_failure_completes_it(redis: Redis) -> None:
    store = Store(redis, Keys("cp"), upload_chunk_size=10, upload_memory_share=0.5)
    await store.prepare()
    await store.upload([coupon("OLD3"), coupon("OLD17")])
    coupons = [coupon(f"OLD{i}" if i in (3, 17) else f"N{i}") for i in range(50)]
    body = orjson.dumps([c.code for c in coupons])
    idem = Idempotency(store.keys.idempotency("open", "k"), fingerprint(b"POST /v1/coupons\n", body), 60_000)

    calls = 0

    async def memory_that_fills_up() -> Memory:  # full from the third chunk on: a 507
        nonlocal calls
        calls += 1
        return Memory(used=90 if calls >= 3 else 10, max=100)

    store.upkeep.memory = memory_that_fills_up  # type: ignore[method-assign]
    with pytest.raises(StoreFull):
        await store.keyed(idem, store.upload(coupons))
    assert (await store.stats()).types[CouponType.STANDARD].created == 2 + 18  # 2 chunks, a duplicate in each

    store.upkeep.memory = lambda: _roomy()  # type: ignore[method-assign]
    resumed = await store.keyed(idem, store.upload(coupons))
    assert (resumed.value.created, resumed.value.duplicates) == (48, ["OLD3", "OLD17"])  # as one upload
    assert not resumed.replayed
    replayed = await store.keyed(idem, store.upload(coupons))
    assert replayed == type(replayed)(resumed.value, replayed=True)
    assert (await store.stats()).types[CouponType.STANDARD].created == 50
    assert set(await redis.hkeys(idem.record)) == {"fp", "reply"}  # the chunks' records went


async def _roomy() -> Memory:
    return Memory(used=0, max=0)


async def test_an_app_killed_mid_request_never_runs_a_keyed_request_twice(
    redis_server: RedisServer, redis: Redis
) -> None:
    """Keyed allocations (a key per user) run against a server that is SIGKILLed; each is then
    sent again, with its key, to another server: every user ends up with exactly one coupon."""
    doomed, survivor = LiveServer(redis_server.url), LiveServer(redis_server.url)
    sent: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=doomed.url, timeout=10) as http:
            await stock(http, n=20, max_usages=10_000)

            async def client(n: int) -> None:
                for i in range(100_000):
                    user = f"k{n}-{i}"
                    sent.append(user)
                    try:
                        await http.post("/v1/allocations", json={"user_id": user}, headers=keyed(user))
                    except httpx.TransportError:
                        return

            clients = [asyncio.create_task(client(n)) for n in range(20)]
            await asyncio.sleep(1.5)
            doomed.process.send_signal(signal.SIGKILL)
            doomed.process.wait(10)
            await asyncio.gather(*clients)
        async with httpx.AsyncClient(base_url=survivor.url, timeout=10) as http:
            replayed = 0
            for user in sent:
                answer = await http.post("/v1/allocations", json={"user_id": user}, headers=keyed(user))
                assert answer.status_code == 201
                replayed += answer.headers.get("Idempotent-Replayed") == "true"
            assert replayed >= len(sent) - 20  # all but those cut off by the kill were stored
        stats = await Store(redis, Keys("cp")).stats()
        assert stats.types[CouponType.STANDARD].allocated == len(sent)
        for user in sent[:: max(1, len(sent) // 200)]:
            assert await redis.zcard(f"{{cp}}:user:STANDARD:{user}") == 1
        assert (await check(redis, Keys("cp"))).violations == []
    finally:
        doomed.process.kill()
        survivor.stop()
