"""Campaigns over the API (issue 25): batches disabled under allocation load, a cap of
redemptions under concurrent redemptions, the batch routes; on one Redis and on a cluster
pool of CLUSTER_SHARDS shards (the `pool` fixture, tests/http/conftest.py)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
from redis.asyncio import Redis

from coupon_pool.pool.keys import Layout
from coupon_pool.tools.check import check
from support.factories import coupon_json

Pool = tuple[httpx.AsyncClient, Redis, Layout]
UPLOAD = 50_000


async def _upload(http: httpx.AsyncClient, codes: list[str], batch: str, **extra: Any) -> None:
    for i in range(0, len(codes), UPLOAD):
        body = {"coupons": [coupon_json(c, **extra) for c in codes[i : i + UPLOAD]], "batch": batch}
        answer = await http.post("/v1/coupons", json=body)
        assert answer.status_code == 201, answer.text
        assert answer.json()["created"] == len(body["coupons"])


async def _trail(redis: Redis, layout: Layout) -> dict[str, list[dict[str, str]]]:
    """Each slot's audit entries, oldest first."""
    return {k.tag: [fields for _, fields in await redis.xrange(k.audit)] for k in layout.slots}


async def test_a_disabled_batch_under_allocation_load_is_never_allocated_once_the_call_answers(
    pool: Pool,
) -> None:
    http, redis, layout = pool
    size = 200_000 if not layout.sharded else 20_000  # the cluster's upload is slower: a smaller batch
    big = [f"BIG{i:06d}" for i in range(size)]
    await _upload(http, big, "big", expires_in=7200)
    await _upload(http, [f"OTHER{i:04d}" for i in range(3000)], "other", expires_in=10_800)
    answered, enough_before, enough_after, stop = (
        asyncio.Event(),
        asyncio.Event(),
        asyncio.Event(),
        asyncio.Event(),
    )
    after: list[tuple[int, str]] = []  # requests sent after the disable answered: (status, code)
    allocated: list[tuple[str, str]] = []  # (user, code) of each 201

    async def allocate(worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            user = f"w{worker}-{n}"
            sent_after = answered.is_set()
            reply = await http.post("/v1/allocations", json={"user_id": user})
            code = reply.json().get("code", "")
            if reply.status_code == 201:
                allocated.append((user, code))
            if sent_after:
                after.append((reply.status_code, code))
            if len(allocated) >= 300:
                enough_before.set()
            if len(after) >= 300:
                enough_after.set()

    workers = [asyncio.create_task(allocate(w)) for w in range(8)]
    await enough_before.wait()
    disabled = await http.post("/v1/batches/big/disable")
    answered.set()
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["disabled"] is True
    await enough_after.wait()
    stop.set()
    await asyncio.gather(*workers)

    assert all(status == 201 and code.startswith("OTHER") for status, code in after), Counter(after)
    # In each slot's trail, no allocation of a code of the batch after the rule that disabled it.
    for tag, entries in (await _trail(redis, layout)).items():
        ruled = [i for i, e in enumerate(entries) if e["op"] == "batch_rules" and e["batch"] == "big"]
        assert len(ruled) == 1, tag
        late = [
            e for e in entries[ruled[0] :] if e["op"] == "allocate" and e.get("code", "").startswith("BIG")
        ]
        assert late == [], tag
    held_big = [(user, code) for user, code in allocated if code.startswith("BIG")]
    assert (
        len(held_big) >= 300 - 8
    )  # the first 300 were of the batch (it expires first), but for a few in flight
    for user, code in held_big[:20]:
        refused = await http.post("/v1/redemptions", json={"code": code, "user_id": user})
        assert (refused.status_code, refused.json()["code"]) == (409, "coupon_disabled")
    batch = (await http.get("/v1/batches/big")).json()
    assert (batch["disabled"], batch["created"]) == (True, size)
    assert (await http.get("/v1/stats")).json()["types"]["STANDARD"]["disabled"] == size

    enabled = await http.post("/v1/batches/big/enable")
    assert enabled.json()["disabled"] is False
    for user, code in held_big[:20]:
        redeemed = await http.post("/v1/redemptions", json={"code": code, "user_id": user})
        assert redeemed.status_code == 201, redeemed.text
    await _tidied(http, "big")  # those allocations set aside are back in the pool once tidied
    again = await http.post("/v1/allocations", json={"user_id": "after-enable"})
    assert again.json()["code"].startswith("BIG")
    assert (await http.get("/v1/stats")).json()["types"]["STANDARD"]["disabled"] == 0
    assert (await check(redis, layout)).violations == []


async def _tidied(http: httpx.AsyncClient, batch: str) -> None:
    """Until the batch's tidy job (the app's jobs loop runs it) is done."""
    async with asyncio.timeout(120):
        while True:  # a state in Redis, polled
            if not (await http.get(f"/v1/batches/{batch}")).json()["tidying"]:
                return
            await asyncio.sleep(0.1)


async def test_500_concurrent_redemptions_in_a_batch_capped_at_100_redeem_exactly_100(pool: Pool) -> None:
    http, redis, layout = pool
    codes = [f"CAP{i:03d}" for i in range(500)]
    answer = await http.post(
        "/v1/coupons",
        json={"coupons": [coupon_json(c) for c in codes], "batch": "capped", "max_redemptions": 100},
    )
    assert answer.json() == {"created": 500, "duplicates": [], "batch": "capped"}
    holders = []
    for i in range(500):
        given = await http.post("/v1/allocations", json={"user_id": f"u{i}"})
        holders.append((f"u{i}", given.json()["code"]))

    replies = await asyncio.gather(
        *(http.post("/v1/redemptions", json={"code": code, "user_id": user}) for user, code in holders)
    )

    outcomes = Counter(
        (r.status_code, r.json().get("code") if r.status_code != 201 else None) for r in replies
    )
    assert outcomes == {(201, None): 100, (409, "batch_exhausted"): 400}
    batch = (await http.get("/v1/batches/capped")).json()
    assert (batch["max_redemptions"], batch["redeemed"], batch["used"]) == (100, 100, 100)
    redeemed = [holders[i] for i, r in enumerate(replies) if r.status_code == 201]
    refused = [holders[i] for i, r in enumerate(replies) if r.status_code != 201]
    undone = await http.post("/v1/rollbacks", json={"code": redeemed[0][1], "user_id": redeemed[0][0]})
    assert undone.status_code == 201
    late = await http.post("/v1/redemptions", json={"code": refused[0][1], "user_id": refused[0][0]})
    assert late.status_code == 201, late.text  # the rollback gave one back
    assert (await http.get("/v1/batches/capped")).json()["redeemed"] == 100
    raised = await http.patch("/v1/batches/capped", json={"max_redemptions": 101})
    assert raised.json()["max_redemptions"] == 101
    assert (
        await http.post("/v1/redemptions", json={"code": refused[1][1], "user_id": refused[1][0]})
    ).status_code == 201
    assert (await check(redis, layout)).violations == []


async def test_the_batch_routes_answer_clear_errors(pool: Pool) -> None:
    http, _, _ = pool
    await http.post("/v1/coupons", json={"coupons": [coupon_json("R1")], "batch": "r"})
    assert (await http.get("/v1/batches/none")).json()["code"] == "batch_not_found"
    assert (await http.post("/v1/batches/none/disable")).status_code == 404
    assert (await http.patch("/v1/batches/none", json={"max_redemptions": 1})).status_code == 404
    assert (await http.get("/v1/batches/bad%20id")).status_code == 422
    assert (await http.get("/v1/batches/" + "x" * 65)).status_code == 422
    assert (await http.patch("/v1/batches/r", json={"max_redemptions": -1})).status_code == 422
    assert (await http.patch("/v1/batches/r", json={})).status_code == 422  # say what changes
    assert (await http.post("/v1/coupons/NOPE/disable")).json()["code"] == "coupon_not_found"
    bad = await http.post("/v1/coupons", json={"coupons": [coupon_json("R2")], "batch": "no/slash"})
    assert bad.status_code == 422
    listed = (await http.get("/v1/batches?limit=1")).json()
    assert [b["batch"] for b in listed["batches"]] == ["r"]
    assert listed["next"] is None
    assert (await http.get("/v1/batches?limit=0")).status_code == 422
    state = (await http.post("/v1/coupons/R1/disable")).json()
    assert state == {"code": "R1", "type": "STANDARD", "disabled": True, "disabled_on_its_own": True,
                     "batch": "r", "batch_disabled": False}  # fmt: skip
    assert (await http.get("/v1/coupons/R1")).json()["disabled"] is True
