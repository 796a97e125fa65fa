"""Pool-low events (levels.py, lua/pool_level.lua): one pool_low when a type's available count
falls below its threshold, one pool_recovered when it is back, however often and by however
many processes it is checked; in the audit trail and through consumer groups."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from coupon_pool.http.background import check_levels_periodically
from coupon_pool.http.middleware import JsonLines
from coupon_pool.models import CouponType
from coupon_pool.pool.functions import POOL_LEVEL
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.levels import Crossing, Threshold, thresholds_of
from coupon_pool.pool.store import Store
from coupon_pool.results import TypeLevel
from support.factories import coupon, prepared

STANDARD = CouponType.STANDARD
LOW_AT_3 = {STANDARD: Threshold(3)}


@pytest.fixture
async def one(redis: Redis) -> Store:
    return await prepared(redis)


@pytest.fixture(params=["one", "sharded"])  # one Redis, or the cluster's (conftest.py)
def pool(request: pytest.FixtureRequest) -> Store:
    store: Store = request.getfixturevalue(request.param)
    return store


async def upload(store: Store, first: int, count: int, ctype: str = "STANDARD") -> None:
    await store.upload([coupon(f"{ctype[0]}{i}", type=ctype) for i in range(first, first + count)])


async def allocate(store: Store, count: int, ctype: CouponType = STANDARD) -> None:
    for _ in range(count):
        await store.allocate(f"user-{await store.redis.incr('{cp}:test-users')}", ctype)


def crossings(runs: list[list[Crossing]]) -> list[Crossing]:
    return [c for run in runs for c in run]


async def level_entries(store: Store) -> list[dict[str, Any]]:
    page = await store.audit(1000, None)
    return [
        e.model_dump(mode="json", exclude={"id", "time"})
        for e in page.entries
        if e.op in ("pool_low", "pool_recovered")
    ]


async def test_falling_below_fires_one_pool_low_however_often_and_concurrently_checked(pool: Store) -> None:
    await upload(pool, 0, 5)
    assert await pool.levels.check(LOW_AT_3) == []
    await allocate(pool, 2)  # 3 left: not below 3
    assert await pool.levels.check(LOW_AT_3) == []
    await allocate(pool, 1)

    runs = await asyncio.gather(*(pool.levels.check(LOW_AT_3) for _ in range(10)))
    assert crossings(runs) == [Crossing(STANDARD, "pool_low")]
    for _ in range(5):
        assert await pool.levels.check(LOW_AT_3) == []
    await allocate(pool, 2)  # staying low, down to 0
    assert await pool.levels.check(LOW_AT_3) == []

    low = {"op": "pool_low", "type": "STANDARD", "available": 2, "threshold": 3}
    assert await level_entries(pool) == [low]
    assert await pool.levels.low() == [STANDARD]
    levels = (await pool.levels.levels()).types
    assert levels[STANDARD] == TypeLevel(low=True, available=0, threshold=3)
    assert levels[CouponType.FREE] == TypeLevel(low=False, available=None, threshold=None)


async def test_an_upload_back_above_the_threshold_fires_one_pool_recovered(pool: Store) -> None:
    await upload(pool, 0, 3)
    await allocate(pool, 2)
    assert await pool.levels.check(LOW_AT_3) == [Crossing(STANDARD, "pool_low")]

    await upload(pool, 3, 1)  # 2 available: still low
    assert await pool.levels.check(LOW_AT_3) == []
    await upload(pool, 4, 10)
    runs = await asyncio.gather(*(pool.levels.check(LOW_AT_3) for _ in range(10)))
    assert crossings(runs) == [Crossing(STANDARD, "pool_recovered")]
    assert await pool.levels.check(LOW_AT_3) == []

    assert await level_entries(pool) == [
        {"op": "pool_low", "type": "STANDARD", "available": 1, "threshold": 3},
        {"op": "pool_recovered", "type": "STANDARD", "available": 12, "threshold": 3},
    ]
    assert await pool.levels.low() == []


async def test_two_processes_checking_at_once_record_one_crossing(redis: Redis, one: Store) -> None:
    other = Store(Redis.from_url(_url(redis), decode_responses=True), Keys("cp"))
    try:
        await upload(one, 0, 4)
        await allocate(one, 2)
        runs = await asyncio.gather(
            *(store.levels.check(LOW_AT_3) for _ in range(10) for store in (one, other))
        )
        assert crossings(runs) == [Crossing(STANDARD, "pool_low")]
        assert len(await level_entries(one)) == 1
    finally:
        await other.aclose()


async def test_a_check_older_than_the_latest_applied_changes_nothing(one: Store) -> None:
    await upload(one, 0, 4)
    await allocate(one, 2)
    assert await one.levels.check(LOW_AT_3) == [Crossing(STANDARD, "pool_low")]
    # A process that took its ticket (1) before that check, and read 4 available then.
    k = one.layout.main
    keys, args = POOL_LEVEL.bind(
        levels=k.levels, audit_stream=k.audit, audit_cap=1000, ticket=1, checks=["STANDARD", 4, 3, "", ""]
    )
    assert await one.library.run(POOL_LEVEL, keys, args) == []
    assert await one.levels.low() == [STANDARD]
    assert len(await level_entries(one)) == 1


async def test_each_type_has_its_own_threshold(pool: Store) -> None:
    await upload(pool, 0, 3, "FREE")
    await upload(pool, 0, 3, "MEGADEAL")
    thresholds = thresholds_of({"FREE": "2", "MEGADEAL": "5"})
    assert await pool.levels.check(thresholds) == [Crossing(CouponType.MEGADEAL, "pool_low")]
    await allocate(pool, 2, CouponType.FREE)
    assert await pool.levels.check(thresholds) == [Crossing(CouponType.FREE, "pool_low")]
    assert sorted(await pool.levels.low()) == [CouponType.FREE, CouponType.MEGADEAL]


async def test_a_threshold_in_minutes_applies_the_allocation_rate_of_the_last_minutes(pool: Store) -> None:
    await upload(pool, 0, 30)
    one_minute = {STANDARD: Threshold(1, minutes=True)}
    await allocate(pool, 25)  # before the first sample: not in the rate
    assert await pool.levels.check(one_minute, now=0) == []  # no rate yet: not checked
    assert await pool.levels.check(one_minute, now=5) == []  # samples 5 s apart: still none
    assert await level_entries(pool) == []

    await allocate(pool, 2)  # 2 a minute: 3 available is 1.5 minutes of supply
    assert await pool.levels.check(one_minute, now=60) == []
    await allocate(pool, 1)  # 3 in 80 s, 2.25 a minute: 2 available is below 3 (2.25, rounded up)
    assert await pool.levels.check(one_minute, now=80) == [Crossing(STANDARD, "pool_low")]
    assert await level_entries(pool) == [
        {
            "op": "pool_low", "type": "STANDARD", "available": 2, "threshold": 3, "minutes": 1,
            "rate_per_min": 2.25,
        }
    ]  # fmt: skip

    # Past the window of 5 minutes, with no allocation in it, the supply lasts: recovered.
    assert await pool.levels.check(one_minute, now=400) == []  # one sample left: no rate
    assert await pool.levels.check(one_minute, now=420) == [Crossing(STANDARD, "pool_recovered")]


async def test_the_events_are_in_the_audit_trail_and_reach_a_consumer_group(pool: Store) -> None:
    await pool.feeds.create("crm", "now", "events")
    await upload(pool, 0, 2)
    await pool.levels.check(LOW_AT_3)
    await upload(pool, 2, 2)
    await pool.levels.check(LOW_AT_3)

    events = []
    for n in range(pool.feeds.streams):
        events += [e.body for e in await pool.feeds.read("crm", "c1", n, 100)]
    wanted = [e for e in events if e["op"].startswith("pool_")]
    assert [(e["op"], e["type"], e["available"], e["threshold"]) for e in wanted] == [
        ("pool_low", "STANDARD", 2, 3),
        ("pool_recovered", "STANDARD", 4, 3),
    ]
    page = await pool.audit(100, None)
    assert [e.id for e in page.entries if e.op.startswith("pool_")] == [e["id"] for e in wanted]


def test_a_setting_names_a_count_or_minutes() -> None:
    assert thresholds_of({"FREE": "0", "STANDARD": "30m"}) == {
        CouponType.FREE: Threshold(0),
        STANDARD: Threshold(30, minutes=True),
    }
    assert [str(t) for t in thresholds_of({"FREE": "12", "MEGADEAL": "5m"}).values()] == ["12", "5m"]
    with pytest.raises(ValueError, match="a threshold is <n> or <n>m"):
        Threshold.parse("5 m")


async def test_the_loop_logs_each_crossing_once(one: Store) -> None:
    lines, stop = Lines(), asyncio.Event()
    await upload(one, 0, 2)
    loop = asyncio.create_task(check_levels_periodically(one, LOW_AT_3, 0.05, lines, stop))
    try:
        await lines.until(1)
        await upload(one, 2, 5)
        await lines.until(2)
    finally:
        stop.set()
        await loop
    assert lines.written == [
        {"level": "warning", "event": "pool_low", "type": "STANDARD", "threshold": "3"},
        {"level": "info", "event": "pool_recovered", "type": "STANDARD", "threshold": "3"},
    ]


class Lines(JsonLines):
    """The log lines a loop writes, kept."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[dict[str, Any]] = []
        self.news = asyncio.Event()

    def write(self, **fields: Any) -> None:
        self.written.append(fields)
        self.news.set()

    async def until(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.written) < count:
                self.news.clear()
                await self.news.wait()


def _url(redis: Redis) -> str:
    kwargs = redis.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"
