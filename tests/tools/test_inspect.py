"""`coupon-pool inspect CODE` and what the operator commands say of the Redis they read."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from coupon_pool.models import CouponIn, CouponType
from coupon_pool.pool.codec import holder_state, to_ms
from coupon_pool.pool.keys import CouponField, Keys
from coupon_pool.pool.store import Store
from coupon_pool.settings import Settings, redacted
from coupon_pool.tools.common import announce
from coupon_pool.tools.inspect import inspect, render, when
from support.factories import coupon_json
from support.live_server import LiveServer
from support.redis_server import RedisServer


def inspect_command(
    redis_server: RedisServer, *args: str, namespace: str = "cp"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coupon_pool", "inspect", *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "REDIS_URL": redis_server.url, "KEY_NAMESPACE": namespace},
    )  # fmt: skip


def every_holder(redis_server: RedisServer, code: str, limit: int) -> list[dict[str, Any]]:
    holders, cursor = [], "0:0"
    for _ in range(1000):
        done = inspect_command(redis_server, code, "--json", "--limit", str(limit), "--cursor", cursor)
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

    done = inspect_command(redis_server, "SHOWN", "--limit", "2")

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
    done = inspect_command(redis_server, "NOPE")

    assert done.returncode == 3
    assert "there is no coupon 'NOPE'" in done.stderr


def test_a_code_that_cannot_exist_is_refused_before_redis_is_read(redis_server: RedisServer) -> None:
    done = inspect_command(redis_server, "no such*code")

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


# A namespace of their own: the session's live server settles the holds and starts of "cp"
# (SETTLE_INTERVAL_S), and would settle what these tests leave due on purpose.
HERE = Keys("insp")


async def past_deadline(redis: Redis, code: str, user: str) -> int:
    """Move ``user``'s hold of ``code`` past its deadline, in its holder field and its timer
    alike (as if the deadline had come); the new deadline."""
    holder = CouponField.HOLDER + user
    allocated_at, mark, _ = holder_state(await redis.hget(HERE.coupon(code), holder))
    assert mark == "h"
    await redis.hset(HERE.coupon(code), holder, f"{allocated_at}h{allocated_at}")
    await redis.zadd(HERE.due(CouponType.STANDARD), {f"{code} {user}": int(allocated_at)})
    return int(allocated_at)


async def test_holders_are_shown_with_their_status_and_a_holds_deadline(redis: Redis) -> None:
    store = Store(redis, HERE)
    await store.prepare()
    body = {**coupon_json("HELD", max_usages=5), "metadata": {"campaign": "spring", "tier": "gold"}}
    await store.upload([CouponIn.model_validate_json(orjson.dumps(body))])
    for user in ("open", "late", "gone", "paid"):
        await store.allocate(user, CouponType.STANDARD, hold_s=600)
    await store.allocate("sure", CouponType.STANDARD)
    await store.redeem("HELD", "paid", CouponType.STANDARD)
    open_until = holder_state(await redis.hget(HERE.coupon("HELD"), "u:open"))[2]
    gone_until = await past_deadline(redis, "HELD", "gone")
    await store.settle()  # gone's hold ends unconfirmed: given back
    late_until = await past_deadline(redis, "HELD", "late")  # past its deadline, not settled yet

    coupon = await inspect(redis, HERE, "HELD", 50)

    assert coupon is not None
    by_user = {h["user_id"]: h for h in coupon["holders"]}
    assert {user: (h["status"], h["hold_expires_at"]) for user, h in by_user.items()} == {
        "open": ("held", when(open_until)),
        "late": ("hold_expired", when(str(late_until))),
        "gone": ("hold_expired", when(str(gone_until))),
        "paid": ("redeemed", None),
        "sure": ("allocated", None),
    }
    assert by_user["paid"]["redeemed_at"] is not None
    assert (coupon["allocated"], coupon["metadata"]) == (4, {"campaign": "spring", "tier": "gold"})
    lines = render(coupon).splitlines()
    assert '  metadata    {"campaign":"spring","tier":"gold"}' in lines
    shown = {line.split()[0]: line.rsplit("   ", 1)[1] for line in lines if line.startswith("    ")}
    assert shown == {
        "open": f"held until {when(open_until)}",
        "late": f"hold expired {when(str(late_until))}",
        "gone": f"hold expired {when(str(gone_until))}",
        "paid": f"redeemed {by_user['paid']['redeemed_at']}",
        "sure": "not redeemed",
    }


async def test_a_scheduled_coupon_is_shown_in_its_types_timers_until_its_start(
    redis: Redis, redis_server: RedisServer
) -> None:
    store = Store(redis, HERE)
    await store.prepare()
    starts_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    body = {**coupon_json("LATER", expires_in=7200), "starts_at": starts_at.isoformat()}
    await store.upload([CouponIn.model_validate_json(orjson.dumps(body))])

    done = inspect_command(redis_server, "LATER", "--json", namespace="insp")

    coupon = orjson.loads(done.stdout)
    assert (coupon["starts_at"], coupon["scheduled"]) == (when(str(to_ms(starts_at))), True)
    assert coupon["in_set"] == "{insp}:due:STANDARD (scheduled: it joins {insp}:avail:STANDARD at its start)"
    assert coupon["metadata"] == {}
    assert f"  starts      {coupon['starts_at']}   SCHEDULED" in render(coupon).splitlines()
    # Its start comes (moved into the past, where settle() finds it), and it joins the pool.
    await redis.hset(HERE.coupon("LATER"), CouponField.STARTS, 1000)
    await redis.zadd(HERE.due(CouponType.STANDARD), {"LATER": 1000})
    await store.settle()
    started = await inspect(redis, HERE, "LATER", 50)
    assert started is not None
    assert (started["starts_at"], started["scheduled"]) == ("1970-01-01T00:00:01.000Z", False)
    assert started["in_set"] == "{insp}:avail:STANDARD (available)"
    assert "  starts      1970-01-01T00:00:01.000Z" in render(started).splitlines()


async def test_inspect_shows_the_batch_and_a_coupon_set_aside_while_disabled(redis: Redis) -> None:
    from coupon_pool.errors import PoolEmpty
    from support.factories import coupon

    store = Store(redis, Keys("cp"))
    await store.upload([coupon("AWAY"), coupon("SOLO")], batch="leaked")
    await store.batches.set_rules("leaked", disabled=True)
    with pytest.raises(PoolEmpty):
        await store.allocate("u1", CouponType.STANDARD)  # it sets both aside
    await store.batches.switch("SOLO", None, disable=True)

    away = await inspect(redis, Keys("cp"), "AWAY", 10)
    solo = await inspect(redis, Keys("cp"), "SOLO", 10)

    assert away is not None
    assert solo is not None
    assert (away["batch"], away["disabled"], away["disabled_on_its_own"], away["batch_disabled"]) == (
        "leaked", True, False, True,
    )  # fmt: skip
    assert away["in_set"] == "{cp}:exhausted (set aside: disabled)"
    assert "  batch       leaked   DISABLED" in render(away)
    assert "DISABLED    on its own" not in render(away)
    assert "  DISABLED    on its own: never allocated, not redeemable" in render(solo)
