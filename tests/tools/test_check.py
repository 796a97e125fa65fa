"""The invariant checker: clean after real workloads, and it names every corruption."""

from __future__ import annotations

import asyncio
import io
import os
import random
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as sync_redis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from coupon_pool.errors import CouponError
from coupon_pool.models import MAX_UPLOAD, CouponIn, CouponType
from coupon_pool.pool.codec import holder_state
from coupon_pool.pool.keys import CouponField, Keys
from coupon_pool.pool.megadeal import MegadealGate
from coupon_pool.pool.store import Store
from coupon_pool.settings import MegadealLimits
from coupon_pool.tools.check import Progress, check
from coupon_pool.tools.check_coupons import CouponRules
from support.cluster import CLUSTER_SHARDS, Cluster, cluster_client
from support.factories import coupon, coupon_json
from support.redis_server import RedisServer

STANDARD, FREE, MEGADEAL = CouponType.STANDARD, CouponType.FREE, CouponType.MEGADEAL


async def scenario(store: Store) -> None:
    """Every kind of state: available, exhausted, redeemed, expired, purged and retired."""
    await store.upload(
        [
            coupon("S1", max_usages=3),
            coupon("S2"),
            coupon("F1", type="FREE", max_usages=2),
            coupon("OLD", expires_in=1),
            coupon("LATE", expires_in=1.05),
            coupon("USED", type="FREE", expires_in=1, max_usages=2),
        ]
    )
    assert (await store.allocate("a", STANDARD)).code == "OLD"  # the first to expire
    assert (await store.allocate("a", FREE)).code == "USED"
    await store.redeem("USED", "a", FREE)
    assert [(await store.allocate(u, STANDARD)).code for u in "bcd"] == ["LATE", "S1", "S1"]
    await store.redeem("S1", "c", STANDARD)
    await asyncio.sleep(1.2)
    result = await store.purge()  # OLD (held, never redeemed) and LATE deleted, USED retired
    assert (result.purged[STANDARD], result.retired[FREE]) == (2, 1)


async def test_a_pool_after_a_scenario_has_no_violations(store: Store) -> None:
    await scenario(store)
    report = await check(store.redis, store.keys)
    assert report.violations == []
    assert report.coupons == 4  # S1, S2, F1, and USED, retired with its history


async def test_expired_coupons_awaiting_the_purge_are_counted_not_violations(store: Store) -> None:
    await store.upload([coupon("SOON", expires_in=0.5), coupon("LIVE")])
    await asyncio.sleep(0.6)
    report = await check(store.redis, store.keys)
    assert (report.ok, report.coupons, report.awaiting_purge) == (True, 2, 1)


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (lambda r: r.hset("{cp}:c:S2", "alloc", 5), "coupon 'S2': alloc is 5 but"),
        (lambda r: r.hset("{cp}:c:S2", "u:mallory", "1"), "coupon 'S2': alloc is"),
        (lambda r: r.hset("{cp}:c:S2", "used", 1), "coupon 'S2': used is 1 but 0 holders"),
        (lambda r: r.zadd("{cp}:avail:STANDARD", {"GHOST": 1}), "holds 'GHOST', which has no coupon hash"),
        (lambda r: r.zadd("{cp}:exhausted", {"F1": 1}), "coupon 'F1': in more than one sorted set"),
        (lambda r: r.zrem("{cp}:avail:FREE", "F1"), "coupon 'F1': in no sorted set"),
        (lambda r: r.hincrby("{cp}:stats", "FREE:created", 1), "FREE: created"),
        (lambda r: r.hincrby("{cp}:stats", "STANDARD:used", 1), "STANDARD: used counter"),
        (lambda r: r.hset("{cp}:c:S2", "u:eve", "2:1"), "holder 'eve' redeemed before it was allocated"),
        # The per-user structures (alice holds S2, which has a usage left).
        (
            lambda r: r.zadd("{cp}:held:STANDARD:bob", {"S2": 4e12}),
            "held:STANDARD:bob lists 'S2', which the user",
        ),
        (lambda r: r.zrem("{cp}:held:STANDARD:alice", "S2"), "names 'alice', whose held set does not list"),
        (lambda r: r.srem("{cp}:trk:S2", "alice"), "{cp}:trk:S2 does not name the user"),
        (
            lambda r: r.zadd("{cp}:user:STANDARD:bob", {"S2": 1}),
            "{cp}:user:STANDARD:bob lists 'S2', which the user does not",
        ),
        (lambda r: r.zadd("{cp}:draining:STANDARD", {"NOPE": 1}), "draining:STANDARD holds 'NOPE', not in"),
        (lambda r: r.hset("{cp}:idem:open:k", "fp", "x"), "{cp}:idem:open:k never expires"),
    ],
    ids=[
        "alloc",
        "holder",
        "used",
        "dangling",
        "two-sets",
        "no-set",
        "created",
        "used-counter",
        "order",
        "held-extra",
        "held-missing-tracked",
        "tracked-missing",
        "listing",
        "count",
        "record",
    ],
)
async def test_each_corruption_is_reported(store: Store, corrupt: object, expected: str) -> None:
    first = [coupon(f"A{i}", max_usages=2, expires_in=600) for i in range(8)]
    await store.upload([*first, coupon("S2", max_usages=2), coupon("F1", type="FREE")])
    for _ in range(9):  # A0-A7, then S2: with her ninth coupon her held set lists them all
        await store.allocate("alice", STANDARD)
    assert len(await store.redis.zrange("{cp}:held:STANDARD:alice", 0, -1)) == 9
    assert (await check(store.redis, store.keys)).ok
    await corrupt(store.redis)  # type: ignore[operator]
    report = await check(store.redis, store.keys)
    assert not report.ok
    assert any(expected in v for v in report.violations), report.violations


def scheduled(code: str, starts_in: float = 3600, **fields: Any) -> CouponIn:
    """A coupon whose start is ``starts_in`` seconds ahead (it expires an hour after), with
    ``fields`` (type, metadata) as an upload gives them."""
    start = (datetime.now(UTC) + timedelta(seconds=starts_in)).isoformat()
    body = {**coupon_json(code, expires_in=starts_in + 3600), "starts_at": start, **fields}
    return CouponIn.model_validate_json(orjson.dumps(body))


def scheduled_soon(code: str, expires_in: float, **fields: Any) -> CouponIn:
    """A coupon that starts within a second (when it expires later), else at once."""
    start = (datetime.now(UTC) + timedelta(seconds=min(0.5, expires_in / 2))).isoformat()
    body = {**coupon_json(code, expires_in=expires_in, **fields), "starts_at": start}
    return CouponIn.model_validate_json(orjson.dumps(body))


async def lapse(store: Store, code: str, user: str, coupon_type: CouponType = STANDARD) -> None:
    """End ``user``'s hold of ``code`` unconfirmed now: its deadline moved into the past, in
    its holder field, then its timer (as if it had come), and settled. In that order, a
    settle() between the two (a live server's sweep in the same Redis) finds nothing due."""
    keys, holder = store.keys, CouponField.HOLDER + user
    allocated_at, mark, _ = holder_state(await store.redis.hget(keys.coupon(code), holder))
    assert mark == "h"
    past = int(allocated_at)  # a deadline Redis's clock has reached
    await store.redis.hset(keys.coupon(code), holder, f"{allocated_at}h{past}")
    await store.redis.zadd(keys.due(coupon_type), {f"{code} {user}": past})
    await store.settle()
    assert holder_state(await store.redis.hget(keys.coupon(code), holder))[1] == "x"


async def holds_scenario(store: Store) -> None:
    """Holds open, confirmed, released, lapsed (and taken again), and scheduled coupons."""
    await store.upload(
        [
            coupon("S1", max_usages=3, expires_in=600),
            coupon("S2", max_usages=2, expires_in=700),
            coupon("F1", type="FREE", max_usages=2),
            scheduled("LATER", metadata={"campaign": "spring"}),
            scheduled("LATERF", type="FREE"),
            scheduled("SOON", starts_in=3000),  # its start comes: see below
        ]
    )
    assert (await store.allocate("open", STANDARD, hold_s=600)).code == "S1"
    assert (await store.allocate("gone", STANDARD, hold_s=600)).code == "S1"
    assert (await store.allocate("again", STANDARD, hold_s=600)).code == "S1"  # its last usage
    assert (await store.allocate("again", STANDARD, hold_s=600)).code == "S2"
    await store.redeem("S2", "again", STANDARD)  # confirmed
    await store.allocate("sure", FREE, hold_s=60)
    await store.release("F1", "sure", FREE)  # ended early
    await store.allocate("kept", FREE)  # for good
    await lapse(store, "S1", "gone")
    await lapse(store, "S1", "again")
    assert (await store.allocate("again", STANDARD, hold_s=600)).code == "S1"  # hers again
    await store.allocate("lapsed", STANDARD, hold_s=600)
    await lapse(store, "S1", "lapsed")
    assert await store.redis.zrange(store.keys.due(STANDARD), 0, -1) == [
        "S1 again",
        "S1 open",
        "SOON",
        "LATER",
    ]
    counters = ["STANDARD:held", "STANDARD:scheduled", "STANDARD:hold_expired"]
    assert await store.redis.hmget(store.keys.stats, counters) == ["2", "2", "3"]
    assert await store.redis.zcard(store.keys.lapsed(STANDARD, "gone")) == 1
    # SOON's start comes by the clock, not yet by settle(): it is still a timer (unless a live
    # server's sweep in the same Redis settles it first: clean either way).
    await store.redis.hset(store.keys.coupon("SOON"), CouponField.STARTS, 1)
    await store.redis.zadd(store.keys.due(STANDARD), {"SOON": 1})


async def test_a_pool_with_holds_lapsed_holds_and_scheduled_coupons_has_no_violations(store: Store) -> None:
    await holds_scenario(store)
    redis, keys = store.redis, store.keys

    report = await check(redis, keys)

    assert report.violations == []
    assert report.coupons == 6
    await store.settle()  # SOON starts; a clean pool stays clean
    assert (await check(redis, keys)).violations == []


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        # hal's hold of H is open; lee's hold of L lapsed; LATER is scheduled.
        (lambda r: r.zrem("{cp}:due:STANDARD", "H hal"), "holder 'hal' holds it until"),
        (
            lambda r: r.zadd("{cp}:due:STANDARD", {"H hal": 4e12}),
            "'H hal' is scored 4000000000000 in {cp}:due:ST",
        ),
        (
            lambda r: r.zadd("{cp}:due:FREE", {"H hal": 4e12}),
            "'H hal' is scored 4000000000000 in {cp}:due:FREE",
        ),
        (
            lambda r: r.zadd("{cp}:due:STANDARD", {"S2 zed": 4e12}),
            "{cp}:due:STANDARD has the hold 'S2 zed' (4000000000000), but the user's holder field is None",
        ),
        (
            lambda r: r.hset("{cp}:c:H", "u:hal", "1"),
            "{cp}:due:STANDARD has the hold 'H hal' (",  # a timer left behind by a hold now for good
        ),
        (lambda r: r.zadd("{cp}:due:FREE", {"GONE zed": 4e12}), "'GONE zed', whose coupon has no hash"),
        (lambda r: r.hincrby("{cp}:stats", "STANDARD:held", 1), "STANDARD: held counter 2 != 1 holds in"),
        (lambda r: r.zadd("{cp}:avail:STANDARD", {"LATER": 1}), "coupon 'LATER': scheduled (its start is in"),
        (lambda r: r.zadd("{cp}:exhausted", {"LATER": 1}), "yet in ['{cp}:exhausted']"),
        (lambda r: r.hset("{cp}:c:LATER", "st", 5), "coupon 'LATER': scheduled at "),
        (lambda r: r.hdel("{cp}:c:LATER", "st"), "but its st is None"),
        (lambda r: r.zrem("{cp}:due:STANDARD", "LATER"), "coupon 'LATER': in no sorted set"),
        (lambda r: r.zadd("{cp}:due:FREE", {"LATER": 4e12}), "its start is in {cp}:due:FREE, not the timers"),
        (
            lambda r: r.hincrby("{cp}:stats", "STANDARD:scheduled", -1),
            "STANDARD: scheduled counter 0 != 1 starts",
        ),
        (
            lambda r: r.zadd("{cp}:due:FREE", {"NOSUCH": 4e12}),
            "has the start of 'NOSUCH', which has no coupon hash",
        ),
        (
            lambda r: r.zrem("{cp}:lapsed:STANDARD:lee", "L"),
            "coupon 'L': holder 'lee''s hold lapsed, but {cp}:lapsed:STANDARD:lee does not list it",
        ),
        (
            lambda r: r.zadd("{cp}:user:STANDARD:lee", {"L": 1}),
            "{cp}:user:STANDARD:lee lists 'L', whose hold lapsed",
        ),
        (
            lambda r: r.zadd("{cp}:lapsed:STANDARD:ann", {"H": 1}),
            "{cp}:lapsed:STANDARD:ann lists 'H', whose holder field is None, not a hold that lapsed",
        ),
        (
            lambda r: r.zadd("{cp}:lapsed:STANDARD:hal", {"H": 1}),
            "{cp}:lapsed:STANDARD:hal lists 'H', whose holder field is '",
        ),
        (
            lambda r: r.zadd("{cp}:lapsed:STANDARD:lee", {"L": 1}),
            "{cp}:lapsed:STANDARD:lee scores 'L' 1, not",
        ),
        (lambda r: r.hincrby("{cp}:c:L", "alloc", 1), "coupon 'L': alloc is 1 but 0 users hold it"),
        (
            lambda r: r.zadd("{cp}:held:STANDARD:lee", {"L": 4e12}),
            "held:STANDARD:lee lists 'L', which the user",
        ),
        (lambda r: r.hset("{cp}:c:H", "u:hal", "1h"), "coupon 'H': holder 'hal' has a malformed record '1h'"),
        (lambda r: r.hset("{cp}:c:H", "u:hal", "1y2"), "coupon 'H': holder 'hal' has a malformed record"),
    ],
    ids=[
        "hold-untimed",
        "hold-timed-otherwise",
        "hold-timed-in-another-type",
        "timer-of-no-holder",
        "timer-of-a-plain-holder",
        "timer-of-no-coupon",
        "held-counter",
        "scheduled-available",
        "scheduled-exhausted",
        "scheduled-start",
        "scheduled-no-start",
        "start-untimed",
        "start-in-another-type",
        "scheduled-counter",
        "start-of-no-coupon",
        "lapsed-unlisted",
        "lapsed-still-listed",
        "lapsed-listing-of-no-holder",
        "lapsed-listing-of-a-holder",
        "lapsed-listing-score",
        "lapsed-counted",
        "lapsed-in-held-set",
        "malformed-hold",
        "unknown-mark",
    ],
)
async def test_each_corruption_of_holds_and_starts_is_reported(
    store: Store, corrupt: object, expected: str
) -> None:
    await store.upload(
        [coupon("L", expires_in=600), coupon("H", expires_in=700), coupon("S2"), scheduled("LATER")]
    )
    assert (await store.allocate("lee", STANDARD, hold_s=600)).code == "L"
    assert (await store.allocate("hal", STANDARD, hold_s=600)).code == "H"
    await lapse(store, "L", "lee")
    assert (await check(store.redis, store.keys)).ok
    await corrupt(store.redis)  # type: ignore[operator]
    report = await check(store.redis, store.keys)
    assert not report.ok
    assert any(expected in v for v in report.violations), report.violations


async def test_a_coupon_that_scan_returns_twice_is_counted_once(store: Store) -> None:
    """SCAN may return a key twice, while Redis resizes its table."""
    await store.upload([coupon("TWICE")])
    violations: list[str] = []
    rules = CouponRules(store.keys, now_ms=0, bad=violations.append)
    await rules.load(store.redis)

    await rules.read(store.redis, ["{cp}:c:TWICE", "{cp}:c:TWICE"])
    await rules.read(store.redis, ["{cp}:c:TWICE"])
    rules.finish({"STANDARD:created": 1})

    assert violations == []


async def test_a_megadeal_coupon_is_claimed_in_its_codes_shard_alone(redis_cluster: Cluster) -> None:
    redis_cluster.flush()
    client = cluster_client(redis_cluster)
    store = Store(client, Keys("cp"), shards=CLUSTER_SHARDS)
    await store.prepare()
    await store.upload([coupon("MEGA1", type="MEGADEAL"), coupon("MEGA2", type="MEGADEAL")])
    layout = store.layout
    assert (await check(client, layout)).ok
    home1, home2 = layout.home("MEGA1"), layout.home("MEGA2")

    await client.hdel(home1.megadeal_claims, "MEGA1")
    await client.hset(home2.coupon("MEGA2"), "x", "y")
    violations = (await check(client, layout)).violations
    await client.aclose()

    assert f"MEGADEAL coupon 'MEGA1' is not claimed in {home1.megadeal_claims}" in violations
    assert f"MEGADEAL coupon 'MEGA2' shares its code with {home2.coupon('MEGA2')}" in violations


async def test_a_randomized_concurrent_workload_with_a_redis_restart_ends_clean(tmp_path: Path) -> None:
    """Uploads (some scheduled), allocations (some held, for a second), redemptions,
    releases, settles, purges and MEGADEAL bursts from 24 tasks at once, while Redis is
    killed and started again; then the checker finds nothing wrong."""
    server = RedisServer(tmp_path / "redis", "--appendfsync", "always").start()
    redis = Redis.from_url(server.url, decode_responses=True, socket_timeout=1)
    limits = MegadealLimits(max_concurrent=2, rate_per_s=20, max_wait_s=1, lease_s=2)
    store = Store(redis, Keys("cp"), upload_chunk_size=7, purge_batch_size=5)
    gate = MegadealGate(redis, Keys("cp"), limits)
    rng = random.Random(2026)
    uploaded = 0
    done: dict[str, int] = {}
    stop = asyncio.Event()

    async def worker(n: int) -> None:
        nonlocal uploaded
        held: list[tuple[str, str, CouponType]] = []
        while not stop.is_set():
            op = rng.choice(["upload", "allocate", "allocate", "allocate", "redeem", "redeem", "release",
                             "purge", "settle", "mega"])  # fmt: skip
            try:
                if op == "upload":
                    uploaded += 1
                    await store.upload(
                        [
                            (coupon if rng.random() < 0.8 else scheduled_soon)(
                                f"W{n}-{uploaded}-{i}",
                                type=rng.choice(["FREE", "STANDARD", "MEGADEAL"]),
                                expires_in=rng.choice([0.5, 2, 3600]),
                                max_usages=rng.randint(1, 4),
                            )
                            for i in range(rng.randint(1, 20))
                        ]
                    )
                elif op in ("allocate", "mega"):
                    ctype = MEGADEAL if op == "mega" else rng.choice([FREE, STANDARD])
                    user = f"u{rng.randint(0, 40)}"
                    hold_s = rng.choice([None, None, 1])  # a hold lapses unless redeemed within a second
                    if ctype is MEGADEAL:
                        allocation = await gate.allocate(user, hold_s=hold_s)
                    else:
                        allocation = await store.allocate(user, ctype, hold_s)
                    held.append((allocation.code, user, ctype))
                elif op in ("redeem", "release") and held:
                    code, user, ctype = held.pop(rng.randrange(len(held)))
                    await (store.redeem if op == "redeem" else store.release)(code, user, ctype)
                elif op == "purge":
                    await store.purge()
                elif op == "settle":
                    await store.settle()
                done[op] = done.get(op, 0) + 1
            except (CouponError, RedisError):
                await asyncio.sleep(0.01)  # refused by a rule, or Redis is down: carry on

    tasks = [asyncio.create_task(worker(n)) for n in range(24)]
    await asyncio.sleep(2)
    server.kill()
    await asyncio.sleep(0.5)
    server.start()
    await asyncio.sleep(2)
    stop.set()
    await asyncio.gather(*tasks)
    try:
        assert done.get("allocate", 0) > 50
        assert done.get("redeem", 0) > 20
        assert done.get("purge", 0) > 5
        assert done.get("release", 0) > 5
        report = await check(redis, Keys("cp"))
        assert report.violations == []
        assert report.coupons > 0
    finally:
        await redis.aclose()
        server.stop()


def test_the_command_exits_1_and_lists_violations(redis_server: RedisServer) -> None:
    with sync_redis.Redis.from_url(redis_server.url) as r:
        r.flushall()
        env = {"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin"}
        clean = subprocess.run([sys.executable, "-m", "coupon_pool", "check", "--json"], env=env,
                               capture_output=True, timeout=30, check=False)  # fmt: skip
        assert clean.returncode == 0, clean.stderr
        assert orjson.loads(clean.stdout) == {"ok": True, "coupons": 0, "awaiting_purge": 0, "violations": []}
        r.zadd("{cp}:exhausted", {"NOBODY": 1})
        broken = subprocess.run([sys.executable, "-m", "coupon_pool", "check", "--quiet"], env=env,
                                capture_output=True, timeout=30, check=False)  # fmt: skip
    assert broken.returncode == 1
    assert b"holds 'NOBODY', which has no coupon hash" in broken.stdout
    assert f"coupon-pool check: reading {redis_server.url}, namespace cp\n".encode() == broken.stderr


HOLDERS = 100_000  # one coupon's holders: reading them whole (HGETALL) holds Redis about 25 ms


async def large_pool(url: str) -> None:
    """A coupon with HOLDERS holders, each user's listing, and 50,000 more coupons available."""
    redis = Redis.from_url(url, decode_responses=True)
    store = Store(redis, Keys("cp"))
    await store.prepare()
    await store.upload([coupon("BIG", max_usages=HOLDERS + 1, expires_in=3600)])
    for start in range(0, 50_000, MAX_UPLOAD):
        await store.upload([coupon(f"LATER{i}", expires_in=7200) for i in range(start, start + MAX_UPLOAD)])
    users = iter(range(HOLDERS))

    async def allocating() -> None:
        for i in users:
            assert (await store.allocate(f"user-{i}", STANDARD)).code == "BIG"  # the first to expire

    await asyncio.gather(*(allocating() for _ in range(200)))
    await redis.aclose()


def worst_wait_while_checking(url: str) -> tuple[float, dict[str, object]]:
    """The longest a PING on another connection, sent every millisecond, waits while
    ``coupon-pool check`` runs (at the lowest CPU priority: on a small machine its own CPU
    use would otherwise delay Redis, which is not what is measured); and check's report."""
    probe = sync_redis.Redis.from_url(url)
    waits = []
    with subprocess.Popen(
        [sys.executable, "-m", "coupon_pool", "check", "--json"],
        env={**os.environ, "REDIS_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.nice(19),
    ) as checking:
        while checking.poll() is None:
            started = time.perf_counter()
            probe.ping()
            waits.append(time.perf_counter() - started)
            time.sleep(0.001)
        assert checking.stdout is not None
        report = orjson.loads(checking.stdout.read())
    probe.close()
    assert len(waits) > 1000  # check ran for more than a second
    return max(waits), report


def test_redis_answers_within_10_ms_while_check_walks_a_large_pool(tmp_path: Path) -> None:
    """Every call check makes is small, so Redis keeps answering others within 10 ms. A wait
    over that is measured again, in a second run: a call of check's that holds Redis does so
    in every run, while the scheduling noise of a shared machine (tens of milliseconds at
    times, with no check running) seldom strikes twice."""
    server = RedisServer(tmp_path / "redis", "--appendonly", "no").start()
    try:
        asyncio.run(large_pool(server.url))
        worst, report = worst_wait_while_checking(server.url)
        if worst >= 0.010:
            worst = min(worst, worst_wait_while_checking(server.url)[0])
    finally:
        server.stop()
    assert report == {"ok": True, "coupons": 50_001, "awaiting_purge": 0, "violations": []}
    assert worst < 0.010


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_progress_on_a_terminal_is_one_line_redrawn_and_ended(store: Store) -> None:
    await scenario(store)
    terminal = Terminal()
    progress = Progress(terminal)

    await check(store.redis, store.keys, progress)
    progress.end()

    drawn = terminal.getvalue()
    assert drawn.startswith("\r")
    assert drawn.endswith("\x1b[K\n")
    assert drawn.count("\n") == 1
    last = drawn.split("\r")[-1]
    assert re.fullmatch(r"check \{cp\}: 10 keys read \(4 coupons, 0 held sets, 0 tracked sets, 5 listings, "
                        r"0 lapsed listings, 0 records, 1 batch counters\), 0 violations, [0-9.]+s\x1b\[K\n",
                        last)  # fmt: skip


def test_progress_off_a_terminal_is_plain_lines_every_interval(redis_server: RedisServer) -> None:
    with sync_redis.Redis.from_url(redis_server.url) as r:
        r.flushall()
        fields = {CouponField.TYPE: "STANDARD", CouponField.EXPIRES: 1, CouponField.MAX_USAGES: 1,
                  CouponField.ALLOCATED: 0, CouponField.USED: 0}  # fmt: skip
        r.hset("{cp}:c:LOST", mapping=fields)
        r.zadd("{cp}:user:STANDARD:ann", {"LOST": 1})
        done = subprocess.run(
            [sys.executable, "-m", "coupon_pool", "check", "--progress-every", "0"],
            env={"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    assert done.returncode == 1
    announced, *lines = done.stderr.splitlines()
    assert announced == f"coupon-pool check: reading {redis_server.url}, namespace cp"
    assert "\r" not in done.stderr
    assert [line.rsplit(", ", 1)[0] for line in lines] == [
        "check {cp}: 1 keys read (1 coupons, 0 held sets, 0 tracked sets, 0 listings, 0 lapsed listings, "
        "0 records, 0 batch counters), 1 violations",
        "check {cp}: 2 keys read (1 coupons, 0 held sets, 0 tracked sets, 1 listings, 0 lapsed listings, "
        "0 records, 0 batch counters), 2 violations",
        "check {cp}: 2 keys read (1 coupons, 0 held sets, 0 tracked sets, 1 listings, 0 lapsed listings, "
        "0 records, 0 batch counters), 3 violations",  # the counters, checked last
    ]


@pytest.mark.parametrize("seconds", ["-1", "nan", "inf", "3601", "soon"])
def test_progress_every_is_a_number_of_seconds_up_to_an_hour(seconds: str) -> None:
    done = subprocess.run([sys.executable, "-m", "coupon_pool", "check", "--progress-every", seconds],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip

    assert done.returncode == 2
    assert "--progress-every: must be a number of seconds from 0 to 3600" in done.stderr
