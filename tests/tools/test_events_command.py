"""`coupon-pool events --group NAME`: the trail as JSON Lines, each event acknowledged once
written; a run that stopped goes on from what it had not acknowledged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from coupon_pool.models import CouponType
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from support.cluster import CLUSTER_SHARDS, Cluster
from support.factories import coupon
from support.redis_server import RedisServer


def environment(where: RedisServer | Cluster) -> dict[str, str]:
    env = {**os.environ, "REDIS_URL": where.url, "KEY_NAMESPACE": "cp"}
    if isinstance(where, Cluster):
        env |= {"REDIS_CLUSTER": "1", "POOL_SHARDS": str(CLUSTER_SHARDS)}
    return env


def events(where: RedisServer | Cluster, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "coupon_pool", "events", *args],
        capture_output=True, timeout=120, check=False, env=environment(where),
    )  # fmt: skip


def following(where: RedisServer | Cluster, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "coupon_pool", "events", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environment(where),
    )  # fmt: skip


def lines(done: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line) for line in done.stdout.splitlines()]


async def trail_ids(store: Store) -> set[str]:
    ids = set()
    for n, k in enumerate(store.layout.slots):
        entries: Any = await store.redis.xrange(k.audit)
        ids |= {f"{entry}-{n}" if store.layout.sharded else entry for entry, _ in entries}
    return ids


@pytest.fixture(params=["one-redis", "sharded"])
def place(request: pytest.FixtureRequest) -> tuple[Store, RedisServer | Cluster]:
    if request.param == "one-redis":
        redis: Redis = request.getfixturevalue("redis")
        return Store(redis, Keys("cp")), request.getfixturevalue("redis_server")
    return request.getfixturevalue("sharded"), request.getfixturevalue("redis_cluster")


async def test_a_new_group_from_the_start_writes_the_trail_once_then_only_what_is_new(
    place: tuple[Store, RedisServer | Cluster],
) -> None:
    store, where = place
    await store.upload([coupon(f"C{i}", max_usages=10) for i in range(20)])
    for i in range(10):
        await store.allocate(f"u{i}", CouponType.STANDARD)

    first = lines(events(where, "--group", "crm", "--from", "start"))
    assert {e["id"] for e in first} == await trail_ids(store)
    assert len(first) == len({e["id"] for e in first})
    # Oldest first across the streams (by time, then the stream). Compared as moments: as text
    # a whole second, "…:19Z", sorts after "…:19.001000Z".
    times = [datetime.fromisoformat(e["time"]) for e in first]
    assert times == sorted(times)

    assert lines(events(where, "--group", "crm")) == []
    await store.allocate("late", CouponType.STANDARD)
    again = lines(events(where, "--group", "crm", "--from", "start"))  # an existing group: --from is moot
    assert [e["user_id"] for e in again if "code" in e] == ["late"]
    assert {e["id"] for e in first + again} == await trail_ids(store)


async def test_a_run_killed_before_it_acknowledged_writes_those_again(
    redis: Redis, redis_server: RedisServer
) -> None:
    store = Store(redis, Keys("cp"))
    await store.upload([coupon("C", max_usages=1000)])
    before = await trail_ids(store)
    await store.feeds.create("g", "now", "events")
    for i in range(300):
        await store.allocate(f"u{i}", CouponType.STANDARD)
    # Handed to the command's consumer, never acknowledged: as if it had died before the acks.
    handed = await store.feeds.read("g", "events", 0, 120)
    # A --follow run killed while it waits: each line it wrote was acknowledged once written.
    follower = following(redis_server, "--group", "g", "--follow", "--count", "50")
    assert follower.stdout is not None
    got = [orjson.loads(follower.stdout.readline()) for _ in range(200)]
    follower.send_signal(signal.SIGKILL)  # acknowledged what it wrote so far, or some of it
    got += [orjson.loads(line) for line in follower.stdout.read().splitlines()]
    follower.wait(timeout=30)
    got += lines(events(redis_server, "--group", "g"))

    assert {e["id"] for e in got} == await trail_ids(store) - before  # none missing (some twice)
    assert [e["id"] for e in got[:120]] == [e.id for e in handed]  # its own, first
    assert {e["user_id"] for e in got} == {f"u{i}" for i in range(300)}
    assert (await redis.xpending("{cp}:audit", "g"))["pending"] == 0


async def test_drop_deletes_the_group_and_bad_options_are_refused(
    redis: Redis, redis_server: RedisServer
) -> None:
    store = Store(redis, Keys("cp"))
    await store.feeds.create("g", "now", "events")
    done = events(redis_server, "--group", "g", "--drop")
    assert done.returncode == 0, done.stderr
    assert await store.feeds.registered() == {}
    assert events(redis_server, "--group", "g", "--drop").returncode == 3
    for bad in (["--group", "a b"], ["--group", "x" * 65], ["--group", "g", "--count", "0"],
                ["--group", "g", "--count", "1001"], ["--group", "g", "--from", "then"],
                ["--group", "g", "--claim-idle-s", "-1"], []):  # fmt: skip
        refused = events(redis_server, *bad)
        assert refused.returncode == 2, bad
        assert refused.stdout == b""
