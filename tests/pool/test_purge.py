"""Purge of expired coupons: what is deleted, what is kept, its counters, batches and its lock."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from coupon_pool.errors import CouponNotFound, PoolEmpty
from coupon_pool.models import CouponType
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from support import wait_until
from support.factories import coupon, coupon_json, expired_coupon
from support.live_server import LiveServer
from support.redis_server import RedisServer

STANDARD, FREE, MEGADEAL = CouponType.STANDARD, CouponType.FREE, CouponType.MEGADEAL


async def test_unused_expired_coupons_are_deleted_with_their_allocations(store: Store) -> None:
    await store.upload([coupon("GONE", expires_in=1), coupon("HELD", expires_in=1, max_usages=2)])
    await store.allocate("alice", STANDARD)  # GONE: it expires first
    await store.allocate("alice", STANDARD)  # HELD
    await asyncio.sleep(1.1)

    result = await store.purge()

    assert result.purged == {FREE: 0, STANDARD: 2, MEGADEAL: 0}
    assert result.retired == {FREE: 0, STANDARD: 0, MEGADEAL: 0}
    for code in ("GONE", "HELD"):
        with pytest.raises(CouponNotFound):
            await store.get_coupon(code)
    assert await store.redis.zcard(store.keys.exhausted) == 0  # GONE was there
    assert await store.redis.zcard(store.keys.available(STANDARD)) == 0  # HELD was there


async def test_redeemed_expired_coupons_leave_the_pool_but_keep_their_history(store: Store) -> None:
    await store.upload([coupon("USED", type="FREE", expires_in=1, max_usages=3)])
    await store.allocate("alice", FREE)
    await store.redeem("USED", "alice", FREE)
    await store.allocate("bob", FREE)
    await asyncio.sleep(1.1)

    result = await store.purge()

    assert result.retired[FREE] == 1
    assert result.purged[FREE] == 0
    kept = await store.get_coupon("USED")
    assert (kept.allocated, kept.used) == (2, 1)
    assert [(h.user_id, h.redeemed_at is not None) for h in kept.allocations] == [
        ("alice", True),
        ("bob", False),
    ]
    assert await store.redis.zscore(store.keys.available(FREE), "USED") is None
    assert await store.redis.zscore(store.keys.exhausted, "USED") is None


async def test_purge_leaves_unexpired_coupons_and_other_counters_alone(store: Store) -> None:
    await store.upload([coupon("LIVE", max_usages=2), expired_coupon("OLD", type=MEGADEAL)])
    await store.allocate("alice", STANDARD)
    before = await store.stats()

    result = await store.purge()

    after = await store.stats()
    assert result.purged[MEGADEAL] == 1
    assert after.types[MEGADEAL].purged == 1
    for t in CouponType:
        old, new = before.types[t], after.types[t]
        assert (new.created, new.allocated, new.used, new.available) == (
            old.created,
            old.allocated,
            old.used,
            old.available,
        )
    assert (await store.get_coupon("LIVE")).allocated == 1
    assert await store.redis.zscore(store.keys.available(STANDARD), "LIVE") is not None


async def test_a_second_purge_finds_nothing_to_remove(store: Store) -> None:
    await store.upload([expired_coupon("OLD")])
    await store.purge()
    again = await store.purge()
    assert sum(again.purged.values()) + sum(again.retired.values()) == 0
    assert (await store.stats()).types[STANDARD].purged == 1


async def test_allocation_still_never_hands_out_an_expired_coupon_after_a_purge(store: Store) -> None:
    await store.upload([coupon("SOON", expires_in=1)])
    await asyncio.sleep(1.1)
    with pytest.raises(PoolEmpty):
        await store.allocate("alice", STANDARD)
    await store.purge()
    with pytest.raises(PoolEmpty):
        await store.allocate("alice", STANDARD)


async def test_purge_works_in_batches_of_at_most_the_batch_size(redis: Redis) -> None:
    store = Store(redis, Keys("cp"), purge_batch_size=4)
    await store.upload([expired_coupon(f"OLD-{i}") for i in range(10)])

    result = await store.purge()

    assert result.purged[STANDARD] == 10
    entries = (await store.audit(100, None)).entries
    batches = [e.model_extra["purged_STANDARD"] for e in entries if e.op == "purge" and e.model_extra]
    assert batches == [4, 4, 2]


async def test_a_purged_code_can_be_uploaded_again(store: Store) -> None:
    await store.upload([expired_coupon("AGAIN")])
    await store.purge()
    assert (await store.upload([coupon("AGAIN")])).created == 1


async def test_the_purge_lock_has_one_owner_who_renews_it_until_it_lapses(store: Store) -> None:
    assert await store.try_purge_lock(0.5, "a")
    assert not await store.try_purge_lock(0.5, "b")
    assert await store.try_purge_lock(0.5, "a")  # its holder's next turn: renewed
    assert not await store.try_purge_lock(0.5, "b")
    await asyncio.sleep(0.6)
    assert await store.try_purge_lock(0.5, "b")
    assert not await store.try_purge_lock(0.5, "a")


async def test_post_purge_answers_what_it_removed_by_type(client: httpx.AsyncClient) -> None:
    coupons = [coupon_json("F", type="FREE", expires_in=1), coupon_json("S", expires_in=1)]
    await client.post("/v1/coupons", json={"coupons": coupons})
    await client.post("/v1/allocations", json={"user_id": "u", "type": "FREE"})
    await client.post("/v1/redemptions", json={"code": "F", "user_id": "u"})
    await asyncio.sleep(1.1)

    response = await client.post("/v1/purge")

    assert response.status_code == 200
    assert response.json() == {
        "purged": {"FREE": 0, "STANDARD": 1, "MEGADEAL": 0},
        "retired": {"FREE": 1, "STANDARD": 0, "MEGADEAL": 0},
    }
    stats = (await client.get("/v1/stats")).json()
    assert stats["types"]["STANDARD"]["purged"] == 1
    assert stats["totals"]["purged"] == 1


def upload_expiring(server: LiveServer, count: int, expires_in: float) -> None:
    types = ("FREE", "STANDARD", "MEGADEAL")
    coupons = [coupon_json(f"X{i}", type=types[i % 3], expires_in=expires_in) for i in range(count)]
    assert httpx.post(f"{server.url}/v1/coupons", json={"coupons": coupons}).json()["created"] == count


async def test_two_processes_racing_to_purge_remove_each_coupon_once(
    redis_server: RedisServer, redis: Redis
) -> None:
    servers = [LiveServer(redis_server.url, PURGE_BATCH_SIZE="7") for _ in range(2)]
    try:
        upload_expiring(servers[0], 300, expires_in=1.5)
        await asyncio.sleep(1.6)
        async with httpx.AsyncClient(timeout=30) as http:
            replies = await asyncio.gather(*(http.post(f"{servers[i % 2].url}/v1/purge") for i in range(8)))
    finally:
        for server in servers:
            server.stop()

    removed: Counter[str] = Counter()
    for reply in replies:
        assert reply.status_code == 200
        removed.update(reply.json()["purged"])
    assert removed == {"FREE": 100, "STANDARD": 100, "MEGADEAL": 100}
    assert await redis.hget("{cp}:stats", "STANDARD:purged") == "100"
    assert await redis.keys("{cp}:c:*") == []


def test_the_periodic_purge_runs_in_one_process_per_interval(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    redis = SyncRedis.from_url(redis_server.url, decode_responses=True)
    redis.flushall()
    logs = [tmp_path / f"server-{i}.log" for i in range(3)]
    started = time.monotonic()
    servers = [LiveServer(redis_server.url, log=log, PURGE_INTERVAL_S="0.5") for log in logs]
    try:
        upload_expiring(servers[0], 30, expires_in=1)
        wait_until(lambda: httpx.get(f"{servers[1].url}/v1/stats").json()["totals"]["purged"] == 30)
        time.sleep(1.5)  # more rounds: nothing is left, so nothing more is counted
        stats = httpx.get(f"{servers[2].url}/v1/stats").json()
    finally:
        for server in servers:
            server.stop()
    elapsed = time.monotonic() - started

    assert stats["totals"]["purged"] == 30
    assert stats["totals"]["available"] == 0
    purge_entries = [f for _, f in redis.xrange("{cp}:audit") if f["op"] == "purge"]
    assert sum(int(v) for f in purge_entries for k, v in f.items() if k.startswith("purged_")) == 30
    runs = [
        line for log in logs for line in map(orjson.loads, log.read_bytes().splitlines())
        if line.get("event") == "purge"
    ]  # fmt: skip
    # Three processes each wake every 0.5 s; a purge holds the lock for 0.5 s, so purges are
    # at least 0.5 s apart, whichever process runs them (without the lock: about 3x as many).
    assert 3 <= len(runs) <= elapsed / 0.5 + 1
