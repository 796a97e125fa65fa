"""POST /v1/batches: a batch of codes the service draws, stored by a job of the app's, and
taken over by another process when the one running it is killed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis as SyncRedis

from coupon_pool.pool.keys import Keys
from support import REPO, wait_until
from support.live_server import LiveServer
from support.redis_server import RedisServer


def generation(count: int, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "count": count,
        "discount": {"kind": "flat", "value": "5"},
        "expires_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        **fields,
    }
    if "pattern" not in body and "code_config" not in body:
        body["pattern"] = "MD-########"
    return body


async def finished(client: httpx.AsyncClient, batch: str) -> dict[str, Any]:
    """The batch once its generation has ended (done or failed), within a minute."""
    deadline = time.monotonic() + 60
    while True:
        answer = (await client.get(f"/v1/batches/{batch}")).json()
        if answer["generation"]["status"] != "running":
            return answer  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise TimeoutError(f"generation of {batch} still running: {answer}")
        await asyncio.sleep(0.1)


async def test_a_generation_answers_202_and_its_job_stores_allocatable_codes_of_the_pattern(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/v1/batches", json=generation(200, batch="launch", max_redemptions=50))
    assert r.status_code == 202, r.text
    answer = r.json()
    assert (answer["batch"], answer["source"], answer["type"], answer["max_redemptions"]) == (
        "launch", "generation", "STANDARD", 50,
    )  # fmt: skip
    assert answer["generation"]["count"] == 200
    done = await finished(client, "launch")
    assert done["generation"] == {"status": "done", "count": 200, "stored": 200, "error": None}
    assert (done["created"], done["available"]) == (200, 200)
    codes = []
    for i in range(200):
        allocation = await client.post("/v1/allocations", json={"user_id": f"u{i}"})
        assert allocation.status_code == 201
        codes.append(allocation.json()["code"])
    assert len(set(codes)) == 200
    assert all(re.fullmatch(r"MD-[A-HJ-NP-Z2-9]{8}", c) for c in codes)
    assert (await client.post("/v1/allocations", json={"user_id": "late"})).json()["code"] == "pool_empty"


async def test_without_a_name_the_batch_gets_one(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/batches", json=generation(5, type="FREE"))
    assert r.status_code == 202
    done = await finished(client, r.json()["batch"])
    assert (done["type"], done["created"], done["generation"]["status"]) == ("FREE", 5, "done")


async def test_a_pattern_of_20_combinations_for_10_codes_is_422_pattern_too_small(
    client: httpx.AsyncClient,
) -> None:
    config = {"charset": "ABCDEFGHIJKLMNOPQRST", "length": 1}
    r = await client.post("/v1/batches", json=generation(10, code_config=config, batch="small"))
    assert (r.status_code, r.json()["code"]) == (422, "pattern_too_small")
    assert "20 codes" in r.json()["detail"]
    assert (await client.get("/v1/batches/small")).status_code == 404


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"count": 0}, "count"),
        ({"count": 1_000_001}, "count"),
        ({"pattern": "MD-########", "code_config": {"length": 8}}, "(body)"),
        ({"pattern": "NO-SLOT"}, "pattern"),
        ({"pattern": "MD-####!"}, "pattern"),
        ({"pattern": "#" * 65}, "pattern"),
        ({"code_config": {"pattern": "##", "length": 2}}, "code_config"),
        ({"code_config": {"length": 8, "charset": "A"}}, "code_config.charset"),
        ({"code_config": {"length": 8, "charset": "ABCA"}}, "code_config.charset"),
        ({"code_config": {"length": 60, "prefix": "PROMO-"}}, "code_config"),
        ({"code_config": {"length": 8, "postfix": "+1"}}, "code_config.postfix"),
        ({"max_usages": 0}, "max_usages"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"starts_at": "2999-01-01T00:00:00Z"}, "starts_at"),
        ({"metadata": {"bad key": "x"}}, "metadata.bad key.[key]"),
        ({"batch": "no spaces"}, "batch"),
    ],
)
async def test_each_bad_field_is_422_naming_it(
    client: httpx.AsyncClient, fields: dict[str, Any], field: str
) -> None:
    body = {**generation(10), **fields}
    if "code_config" in fields and "pattern" not in fields:
        body.pop("pattern")
    r = await client.post("/v1/batches", json=body)
    assert (r.status_code, r.json()["code"]) == (422, "validation_error"), r.text
    assert r.json()["errors"][0]["field"] == field


async def test_a_batch_name_taken_is_409_batch_conflict(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v1/batches", json=generation(3, batch="twice"))).status_code == 202
    r = await client.post("/v1/batches", json=generation(3, batch="twice"))
    assert (r.status_code, r.json()["code"]) == (409, "batch_conflict")
    coupon = {"code": "UP1", "discount": {"kind": "flat", "value": "1"}, "expires_at": "2099-01-01T00:00:00Z"}
    assert (
        await client.post("/v1/coupons", json={"coupons": [coupon], "batch": "uploaded"})
    ).status_code == 201
    r = await client.post("/v1/batches", json=generation(3, batch="uploaded"))
    assert (r.status_code, r.json()["code"]) == (409, "batch_conflict")
    assert (await finished(client, "twice"))["created"] == 3


def _batch(url: str, batch: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{url}/v1/batches/{batch}", timeout=10).json()
    return answer


def test_a_generation_whose_process_is_killed_is_finished_by_another_never_storing_a_code_twice(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with SyncRedis.from_url(redis_server.url, decode_responses=True) as redis:
        redis.flushall()
        # Small chunks make the first process slow, so it is killed far from the end.
        jobs = {"JOBS_INTERVAL_S": "0.5"}  # a LiveServer runs no jobs unless asked
        first = LiveServer(redis_server.url, log=tmp_path / "first.log", UPLOAD_CHUNK_SIZE="10", **jobs)
        count = 100_000
        try:
            r = httpx.post(f"{first.url}/v1/batches", json=generation(count, batch="killed"), timeout=10)
            assert r.status_code == 202, r.text
            wait_until(lambda: _batch(first.url, "killed")["created"] >= count // 50, timeout=60)
        finally:
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)
        stored = int(redis.hget(Keys("cp").batch_stats("killed"), "created") or 0)
        assert 0 < stored < count, "the first process finished before it was killed: kill it sooner"
        second = LiveServer(redis_server.url, log=tmp_path / "second.log", **jobs)
        try:  # it claims the job once the dead process's lease has run out
            wait_until(lambda: _batch(second.url, "killed")["generation"]["status"] != "running", timeout=120)
            batch = _batch(second.url, "killed")
        finally:
            second.stop()
        assert batch["generation"] == {"status": "done", "count": count, "stored": count, "error": None}
        codes = redis.lrange(Keys("cp").batch_codes("killed"), 0, -1)
        assert len(codes) == len(set(codes)) == count
        assert redis.zcard(Keys("cp").available_prefix + "STANDARD") == count
    env = {**os.environ, "REDIS_URL": redis_server.url}
    check = subprocess.run([sys.executable, "-m", "coupon_pool", "check", "--quiet"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
