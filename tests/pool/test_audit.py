"""The audit stream: one entry per operation, written by the operation's own script."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from coupon_pool.audit import OPS
from coupon_pool.models import CouponType
from coupon_pool.pool.functions import lua_dir
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.levels import Threshold
from coupon_pool.pool.megadeal import MegadealGate
from coupon_pool.pool.store import Store
from support.cluster import CLUSTER_SHARDS
from support.factories import coupon, coupon_json, expired_coupon

# How the scripts write an op: its name right after 'op' (audit(..., 'op', 'redeem', ...), or
# { 'op', 'purge' } unpacked into audit), or a variable named op after it ('op', a.op or
# 'op', op) whose values are assigned by name ({ op = 'release' }, local op = 'enable').
_WRITTEN = re.compile(r"'op', ([\w.']+)")
_ASSIGNED = re.compile(r"\bop = '(\w+)'")
_FOLLOWED = ("a.op", "op")  # the variables _ASSIGNED finds the values of


def scripts() -> str:
    """lua/*.lua without their comment lines."""
    lines = (line for p in sorted(lua_dir().glob("*.lua")) for line in p.read_text().splitlines())
    return "\n".join(line for line in lines if not line.lstrip().startswith("--"))


def without_ids(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in ("id", "time", "upload")} for e in entries]


async def test_every_operation_of_a_scenario_has_one_entry_in_order(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    await client.post(
        "/v1/coupons", json={"coupons": [coupon_json("A"), coupon_json("A")], "batch": "spring"}
    )
    await client.post("/v1/allocations", json={"user_id": "u1"})
    await client.post("/v1/allocations", json={"user_id": "u2"})
    await client.post("/v1/redemptions", json={"code": "A", "user_id": "u1"})
    await client.post("/v1/redemptions", json={"code": "A", "user_id": "u1"})
    await client.post("/v1/redemptions", json={"code": "NOPE", "user_id": "u1", "type": "FREE"})
    store = Store(redis, Keys("cp"))
    await store.upload([expired_coupon("OLD", type=CouponType.FREE)], batch="old")
    await client.post("/v1/batches/spring/disable")
    await client.post("/v1/coupons/A/enable")
    await client.post("/v1/coupons/A/disable")
    await client.post("/v1/purge")

    page = (await client.get("/v1/audit")).json()

    assert without_ids(page["entries"]) == [
        {"op": "upload", "batch": "spring", "part": "1/1", "created": 1, "duplicates": 1},
        {"op": "allocate", "type": "STANDARD", "user_id": "u1", "code": "A"},
        {"op": "allocate", "type": "STANDARD", "user_id": "u2", "error": "pool_empty"},
        {"op": "redeem", "code": "A", "user_id": "u1", "type": "STANDARD", "used": 1},
        {"op": "redeem", "code": "A", "user_id": "u1", "type": "STANDARD", "error": "already_redeemed"},
        {"op": "redeem", "code": "NOPE", "user_id": "u1", "type": "FREE", "error": "coupon_not_found"},
        {"op": "upload", "batch": "old", "part": "1/1", "created": 1, "duplicates": 0},
        {"op": "batch_rules", "batch": "spring", "rules": "d"},
        # enabling a coupon that is not disabled on its own changes nothing: no entry
        {"op": "disable", "code": "A", "type": "STANDARD"},
        {"op": "purge", "purged_FREE": 1},
    ]
    assert page["next"] == page["entries"][-1]["id"]
    assert await redis.xlen("{cp}:audit") == 10


async def test_megadeal_allocations_are_audited_too(redis: Redis) -> None:
    store = Store(redis, Keys("cp"))
    await store.upload([coupon("M", type="MEGADEAL")])
    await MegadealGate(redis, Keys("cp")).allocate("u1")
    entries = (await store.audit(10, None)).entries
    assert [(e.op, e.model_extra) for e in entries[1:]] == [
        ("allocate", {"type": "MEGADEAL", "user_id": "u1", "code": "M"})
    ]


async def test_a_large_upload_writes_one_entry_per_chunk_under_one_upload_id(redis: Redis) -> None:
    store = Store(redis, Keys("cp"), upload_chunk_size=100)
    await store.upload([coupon(f"C{i}") for i in range(250)])
    entries = (await store.audit(10, None)).entries
    extras = [e.model_extra or {} for e in entries]
    assert [x["part"] for x in extras] == ["1/3", "2/3", "3/3"]
    assert len({x["upload"] for x in extras}) == 1
    assert sum(x["created"] for x in extras) == 250


@pytest.mark.one_slot  # one upload entry for the five coupons; sharded, one per shard they fall in
async def test_audit_pages_follow_on_with_after(client: httpx.AsyncClient) -> None:
    await client.post("/v1/coupons", json={"coupons": [coupon_json(f"P{i}") for i in range(5)]})
    for i in range(5):
        await client.post("/v1/allocations", json={"user_id": f"u{i}"})

    first = (await client.get("/v1/audit", params={"limit": 3, "after": "0-0"})).json()
    second = (await client.get("/v1/audit", params={"limit": 3, "after": first["next"]})).json()
    third = (await client.get("/v1/audit", params={"limit": 3, "after": second["next"]})).json()
    latest = (await client.get("/v1/audit", params={"limit": 2})).json()

    ids = [e["id"] for page in (first, second) for e in page["entries"]]
    assert len(ids) == len(set(ids)) == 6
    assert third["entries"] == []
    assert third["next"] == second["next"]
    assert [e["user_id"] for e in latest["entries"]] == ["u3", "u4"]


async def test_bad_audit_queries_are_refused_naming_the_parameter(client: httpx.AsyncClient) -> None:
    for params, field in (
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"after": "12-x"}, "after"),
        ({"after": "18446744073709551616"}, "after"),
        ({"since": "1"}, "since"),
    ):
        response = await client.get("/v1/audit", params=params)
        assert response.status_code == 422, params
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["field"] == field


async def test_an_audit_cursor_is_an_entry_id_of_this_pool_and_nothing_else(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/v1/allocations", json={"user_id": "u"})  # pool_empty: one entry
    entry_id = (await client.get("/v1/audit")).json()["entries"][-1]["id"]
    sharded = entry_id.count("-") == 2  # <ms>-<seq>-<slot>: the slot, 0 to POOL_SHARDS
    start, last_slot = ("0-0-0", CLUSTER_SHARDS) if sharded else ("0-0", None)
    for after in (entry_id, start, "9999999999999999999-9999999999999999999" + ("-0" if sharded else "")):
        assert (await client.get("/v1/audit", params={"after": after})).status_code == 200, after
    malformed = ["1", "1-", "-1", "1--2", "01-2", "1-02", "1-2-3-4", "1-2-", "+1-2", " 1-2", "1-2 ", "1_2",
                 "1-18446744073709551615", "10000000000000000000-0", "1-2-01", "0x1-2", "1.5-2"]  # fmt: skip
    # A sharded pool's id on one Redis, one Redis's id (or a slot it lacks) on a sharded pool.
    malformed += ["1-2", f"1-2-{last_slot + 1}", "1-2-999"] if last_slot is not None else ["1-2-3", "1-2-0"]
    for after in malformed:
        response = await client.get("/v1/audit", params={"after": after})
        assert response.status_code == 422, after
        assert response.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in response.json()["errors"]] == ["after"], after
    if last_slot is not None:  # the last slot is one of the pool's
        assert (await client.get("/v1/audit", params={"after": f"1-2-{last_slot}"})).status_code == 200


async def test_the_stream_is_capped_at_about_its_configured_length(redis: Redis) -> None:
    store = Store(redis, Keys("cp"), audit_max_len=10)
    await store.upload([coupon(f"C{i}", max_usages=1000) for i in range(1)])
    for i in range(500):
        await store.allocate(f"user-{i}", CouponType.STANDARD)
    # "MAXLEN ~" trims whole stream nodes (up to 100 entries each), never below the cap.
    assert 10 <= await redis.xlen("{cp}:audit") <= 10 + 100


async def test_a_coupon_shows_its_own_allocations_and_redemptions(client: httpx.AsyncClient) -> None:
    await client.post("/v1/coupons", json={"coupons": [coupon_json("SHARED", max_usages=3)]})
    for user in ("a", "b"):
        await client.post("/v1/allocations", json={"user_id": user})
    redeemed = (await client.post("/v1/redemptions", json={"code": "SHARED", "user_id": "b"})).json()

    body = (await client.get("/v1/coupons/SHARED")).json()

    assert [(h["user_id"], h["redeemed_at"]) for h in body["allocations"]] == [
        ("a", None),
        ("b", redeemed["redeemed_at"]),
    ]


def test_every_op_the_scripts_write_is_a_name_or_a_variable_the_registry_test_follows() -> None:
    written = _WRITTEN.findall(scripts())
    assert written
    unfollowed = [w for w in written if not w.startswith("'") and w not in _FOLLOWED]
    assert unfollowed == [], "write the op by name, or teach _FOLLOWED and _ASSIGNED that variable"


def test_the_registry_names_exactly_the_ops_the_scripts_write() -> None:
    lua = scripts()
    named = {w.strip("'") for w in _WRITTEN.findall(lua) if w.startswith("'")}
    assert named | set(_ASSIGNED.findall(lua)) == set(OPS)
    assert len(set(OPS)) == len(OPS)


async def test_a_run_of_every_operation_writes_each_registered_op_and_no_other(redis: Redis) -> None:
    store = Store(redis, Keys("cp"))
    await store.prepare()
    low_at_3 = {CouponType.STANDARD: Threshold(3)}
    await store.upload([coupon("A"), coupon("B")], batch="spring")
    await store.levels.check(low_at_3)  # 2 available: pool_low
    code = (await store.allocate("u1", CouponType.STANDARD)).code
    await store.redeem(code, "u1", None)
    await store.rollback(code, "u1", None)
    await store.release(code, "u1", None)
    held = await store.allocate("u2", CouponType.STANDARD, hold_s=1)
    await store.batches.switch(code, None, disable=True)
    await store.batches.switch(code, None, disable=False)
    await store.batches.set_rules("spring", cap=10)
    await store.upload([coupon("C"), coupon("D"), expired_coupon("OLD")])
    await store.levels.check(low_at_3)  # 3 or more available again: pool_recovered
    assert held.hold_expires_at is not None
    await asyncio.sleep(max(0.0, held.hold_expires_at.timestamp() - time.time()) + 0.05)
    await store.purge()  # the lapsed hold settled first: hold_expired; then OLD: purge

    ops = [e.op for e in (await store.audit(1000, None)).entries]
    assert set(ops) == set(OPS), ops
