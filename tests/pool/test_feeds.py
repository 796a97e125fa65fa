"""Consumer groups over the audit trail (feeds.py): every entry once per group, on one Redis and
on a sharded pool; pending entries taken over; retention by what the groups need."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from coupon_pool.http.background import trim_feeds_periodically
from coupon_pool.http.middleware import JsonLines
from coupon_pool.models import CouponType
from coupon_pool.pool.feeds import Event, FeedError, Feeds
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from support.factories import coupon, prepared


async def allocations(store: Store, count: int, first: int = 0) -> None:
    for i in range(first, first + count):
        await store.allocate(f"user-{i}", CouponType.STANDARD)


async def drain(feeds: Feeds, group: str, consumer: str, count: int = 7) -> list[Event]:
    """Every event the group has not delivered yet, each acknowledged once handled."""
    got: list[Event] = []
    while True:
        more = False
        for n in range(feeds.streams):
            events = await feeds.read(group, consumer, n, count)
            got += events
            await feeds.ack(group, n, [e.entry for e in events])
            more = more or bool(events)
        if not more:
            return got


async def trail_ids(store: Store) -> list[str]:
    """Every entry id of the trail, as events name them."""
    ids = []
    for n, k in enumerate(store.layout.slots):
        entries: Any = await store.redis.xrange(k.audit)
        for entry, _ in entries:
            ids.append(f"{entry}-{n}" if store.layout.sharded else entry)
    return ids


@pytest.fixture
async def one(redis: Redis) -> Store:
    return await prepared(redis, audit_max_len=10, feed_max_len=200)


@pytest.fixture(params=["one", "sharded"])  # one Redis, or the cluster's (conftest.py)
def pool(request: pytest.FixtureRequest) -> Store:
    store: Store = request.getfixturevalue(request.param)
    return store


async def test_a_group_from_the_start_gets_every_entry_once_then_only_new_ones(pool: Store) -> None:
    await pool.upload([coupon(f"C{i}", max_usages=100) for i in range(40)])
    await allocations(pool, 30)
    feeds = pool.feeds
    assert await feeds.create("crm", "start", "events")

    first = await drain(feeds, "crm", "c1")
    assert sorted(e.id for e in first) == sorted(await trail_ids(pool))
    assert len({e.id for e in first}) == len(first)
    assert {e.body["op"] for e in first} == {"upload", "allocate"}
    assert all(e.body["id"] == e.id for e in first)

    await allocations(pool, 5, first=30)
    second = await drain(feeds, "crm", "c1")
    assert sorted(e.id for e in second) == sorted(set(await trail_ids(pool)) - {e.id for e in first})
    assert sorted(e.body["user_id"] for e in second if "code" in e.body) == [
        f"user-{i}" for i in range(30, 35)
    ]


async def test_a_group_from_now_skips_what_was_written_before(pool: Store) -> None:
    await pool.upload([coupon(f"C{i}", max_usages=100) for i in range(10)])
    await allocations(pool, 5)
    before = set(await trail_ids(pool))
    await pool.feeds.create("now", "now", "events")
    assert await drain(pool.feeds, "now", "c1") == []
    await allocations(pool, 3, first=5)
    got = await drain(pool.feeds, "now", "c1")
    assert sorted(e.id for e in got) == sorted(set(await trail_ids(pool)) - before)
    # (sharded, a shard that had none of the coupons wrote pool_empty before another allocated)
    assert sorted(e.body["user_id"] for e in got if "code" in e.body) == ["user-5", "user-6", "user-7"]


async def test_what_a_consumer_did_not_acknowledge_is_its_own_again_or_anothers(pool: Store) -> None:
    await pool.upload([coupon(f"C{i}", max_usages=100) for i in range(10)])
    feeds = pool.feeds
    before = set(await trail_ids(pool))
    await feeds.create("g", "now", "events")
    await allocations(pool, 6)
    handed = [e for n in range(feeds.streams) for e in await feeds.read("g", "dies", n, 100)]
    assert sorted(e.id for e in handed) == sorted(set(await trail_ids(pool)) - before)
    # Restarted under its name, it gets them again, oldest first per stream.
    again = [e for n in range(feeds.streams) for e in await feeds.own_pending("g", "dies", n, 100)]
    assert sorted(e.id for e in again) == sorted(e.id for e in handed)
    # Another consumer takes them over; nothing new is left to read.
    taken = [e for n in range(feeds.streams) for e in await feeds.claim("g", "other", n, 100)]
    assert sorted(e.id for e in taken) == sorted(e.id for e in handed)
    assert [e for n in range(feeds.streams) for e in await feeds.own_pending("g", "dies", n, 100)] == []
    assert await drain(feeds, "g", "other") == []
    for n in range(feeds.streams):
        await feeds.ack("g", n, [e.entry for e in taken if e.stream == n])
    assert all(b.pending == 0 and b.oldest_ms is None for b in await feeds.backlog("g"))


async def test_the_backlog_names_the_oldest_entry_not_acknowledged(one: Store) -> None:
    await one.upload([coupon(f"C{i}", max_usages=100) for i in range(10)])
    await one.feeds.create("g", "now", "events")
    await allocations(one, 3)
    [undelivered] = await one.feeds.backlog("g")
    assert (undelivered.pending, undelivered.lag) == (0, 3)
    handed = await one.feeds.read("g", "c", 0, 1)
    [pending] = await one.feeds.backlog("g")
    assert pending.pending == 1  # (Redis 7.0 may not tell the lag then: lag None)
    assert pending.oldest_ms == undelivered.oldest_ms == int(handed[0].entry.partition("-")[0])
    status = await one.feeds.status()
    assert status.groups["g"][0] == 1
    assert status.groups["g"][1] >= 0
    assert status.dropped == 0


async def test_names_out_of_their_charset_and_missing_groups_are_refused(one: Store) -> None:
    for name in ("", "a b", "x" * 65, "é", "a:b", "a\nb"):
        with pytest.raises(FeedError):
            await one.feeds.create(name, "now", "events")
    with pytest.raises(FeedError, match="no group 'nope'"):
        await one.feeds.read("nope", "c", 0, 10)
    await one.feeds.create("g", "now", "events")
    with pytest.raises(FeedError):
        await one.feeds.read("g", "bad consumer", 0, 10)


async def test_with_a_group_the_trail_keeps_what_it_has_not_acknowledged(one: Store, redis: Redis) -> None:
    """AUDIT_MAX_LEN is 10 here: without a group the writes trim to about that; with one,
    nothing it still needs goes, and once it has acknowledged, the trimmer trims again."""
    await one.upload([coupon("C", max_usages=10_000)])
    await one.feeds.create("slow", "now", "events")
    await allocations(one, 150)
    [trimmed] = await one.feeds.trim()
    assert trimmed.dropped == 0
    assert await redis.xlen("{cp}:audit") >= 150
    assert len(await drain(one.feeds, "slow", "c")) == 150  # every one of them, none lost
    [trimmed] = await one.feeds.trim()
    assert trimmed.removed > 0
    assert 10 <= await redis.xlen("{cp}:audit") <= 10 + 100  # whole nodes, as "MAXLEN ~"
    await one.feeds.drop("slow")
    assert not one.ctx.audit_cap.grouped


async def test_past_feed_max_len_the_oldest_are_dropped_and_counted(one: Store, redis: Redis) -> None:
    """FEED_MAX_LEN is 200 here: a group 300 entries behind loses the oldest 100, counted."""
    await one.upload([coupon("C", max_usages=10_000)])
    await one.feeds.create("slow", "now", "events")
    await one.feeds.create("fast", "now", "events")
    await allocations(one, 300)
    await drain(one.feeds, "fast", "c")
    [trimmed] = await one.feeds.trim()
    assert (trimmed.dropped, trimmed.lost_by) == (100, ["slow"])
    assert await redis.xlen("{cp}:audit") == 200
    assert await one.feeds.dropped() == 100
    got = await drain(one.feeds, "slow", "c")
    assert [e.body["user_id"] for e in got] == [f"user-{i}" for i in range(100, 300)]


async def test_the_store_of_a_new_process_learns_of_the_groups_as_it_starts(redis: Redis) -> None:
    first = Store(redis, Keys("cp"), audit_max_len=10)
    await first.feeds.create("g", "now", "events")
    later = Store(redis, Keys("cp"), audit_max_len=10)
    assert not later.ctx.audit_cap.grouped
    await later.prepare()
    assert later.ctx.audit_cap.grouped
    await later.upload([coupon("C", max_usages=1000)])
    await allocations(later, 250)
    assert await redis.xlen("{cp}:audit") == 251  # the writes kept what the group needs


async def test_the_trim_loop_logs_each_drop_at_error_level_with_the_groups_that_lost(redis: Redis) -> None:
    store = Store(redis, Keys("cp"), audit_max_len=10, feed_max_len=50)
    await store.upload([coupon("C", max_usages=1000)])
    await store.feeds.create("slow", "now", "events")
    await allocations(store, 120)
    written: list[dict[str, Any]] = []
    stop = asyncio.Event()

    class Lines(JsonLines):
        def write(self, **fields: Any) -> None:
            written.append(fields)
            stop.set()

    await asyncio.wait_for(trim_feeds_periodically(store, 0.01, Lines(), stop), timeout=60)

    assert written == [
        {"level": "error", "event": "feed_dropped", "stream": 0, "dropped": 70, "groups": ["slow"],
         "reason": "FEED_MAX_LEN reached: entries a group needed were dropped"},
    ]  # fmt: skip
    assert await redis.xlen("{cp}:audit") == 50
    assert await store.feeds.dropped() == 70
