"""`coupon-pool inspect CODE` and what the operator commands say of the Redis they read."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from coupon_pool.settings import Settings, redacted
from coupon_pool.tools.common import announce
from support.live_server import LiveServer
from support.redis_server import RedisServer


def inspect(redis_server: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coupon_pool", "inspect", *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "REDIS_URL": redis_server.url},
    )  # fmt: skip


def every_holder(redis_server: RedisServer, code: str, limit: int) -> list[dict[str, Any]]:
    holders, cursor = [], "0:0"
    for _ in range(1000):
        done = inspect(redis_server, code, "--json", "--limit", str(limit), "--cursor", cursor)
        page = orjson.loads(done.stdout)
        assert len(page["holders"]) <= limit
        holders += page["holders"]
        if page["next_cursor"] is None:
            return holders
        cursor = page["next_cursor"]
    raise AssertionError("the pages never ended")


def holding(url: str, code: str, holders: int, max_usages: int) -> None:
    coupon = {"code": code, "discount": {"kind": "percent", "value": "12.5"},
              "expires_at": "2030-01-01T00:00:00Z", "max_usages": max_usages}  # fmt: skip
    assert httpx.post(f"{url}/v1/coupons", json={"coupons": [coupon]}).status_code == 201
    with httpx.Client(base_url=url) as client:
        for i in range(holders):
            assert client.post("/v1/allocations", json={"user_id": f"{code}-user-{i}"}).status_code == 201
        assert (
            client.post("/v1/redemptions", json={"code": code, "user_id": f"{code}-user-1"}).status_code
            == 201
        )


@pytest.mark.parametrize(("holders", "limit"), [(30, 7), (300, 50)])  # a listpack hash, then a hashtable
async def test_pages_of_holders_list_each_holder_once(
    holders: int, limit: int, redis: Redis, redis_server: RedisServer, live_server: LiveServer
) -> None:
    holding(live_server.url, "PAGED", holders, max_usages=1000)

    listed = every_holder(redis_server, "PAGED", limit)

    assert sorted(h["user_id"] for h in listed) == sorted(f"PAGED-user-{i}" for i in range(holders))
    redeemed = [h for h in listed if h["redeemed_at"]]
    assert [h["user_id"] for h in redeemed] == ["PAGED-user-1"]
    encoding = await redis.object("encoding", "{cp}:c:PAGED")
    assert encoding == ("listpack" if holders < 100 else "hashtable")


async def test_a_coupon_is_shown_with_its_dates_decoded_and_its_set(
    redis: Redis, redis_server: RedisServer, live_server: LiveServer
) -> None:
    holding(live_server.url, "SHOWN", 3, max_usages=3)

    done = inspect(redis_server, "SHOWN", "--limit", "2")

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "coupon SHOWN   (redis-cli: HGETALL {cp}:c:SHOWN)"
    assert "  discount    12.5%" in lines
    assert "  expires     2030-01-01T00:00:00.000Z" in lines
    assert "  usages      3 allocated, 1 redeemed, of 3" in lines
    assert "  in set      {cp}:exhausted (no free usage)" in lines
    assert "  holders     3, this page:" in lines
    assert lines[-1] == "  more holders: coupon-pool inspect SHOWN --limit 2 --cursor 0:2"
    assert f"coupon-pool inspect: reading {redis_server.url}, namespace cp" in done.stderr


async def test_no_such_coupon_exits_3(redis: Redis, redis_server: RedisServer) -> None:
    done = inspect(redis_server, "NOPE")

    assert done.returncode == 3
    assert "there is no coupon 'NOPE'" in done.stderr


def test_a_code_that_cannot_exist_is_refused_before_redis_is_read(redis_server: RedisServer) -> None:
    done = inspect(redis_server, "no such*code")

    assert done.returncode == 2
    assert "a code is 1-64 characters" in done.stderr


def test_the_redis_read_is_named_without_its_password() -> None:
    assert redacted("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redacted("rediss://app:s3cret@host/1") == "rediss://app:***@host/1"
    assert redacted("redis://127.0.0.1:6390/0") == "redis://127.0.0.1:6390/0"


def test_without_redis_url_the_default_is_called_out(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)

    announce("coupon-pool check", Settings())

    said = capsys.readouterr().err
    assert "coupon-pool check: reading redis://127.0.0.1:6379/0, namespace cp" in said
    assert "NOT the Redis `make run` starts: for that one, set REDIS_URL=redis://127.0.0.1:6390/0" in said
