"""Webhook deliveries' Redis state (deliveries.py): one holder per stream's lease, taken over
once it runs out; parked batches kept in order, bounded, removed one by one."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from coupon_pool.models import CouponType
from coupon_pool.pool.deliveries import Deliveries
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from support.factories import coupon


@pytest.fixture
async def store(redis: Redis) -> Store:
    store = Store(redis, Keys("cp"), shards=3)
    await store.prepare()
    return store


async def test_one_owner_holds_a_streams_lease_until_it_releases_it_or_it_runs_out(store: Store) -> None:
    deliveries = Deliveries(store.ctx, "default")
    assert await deliveries.hold(1, "a", 300)
    assert not await deliveries.hold(1, "b", 300)
    assert await deliveries.hold(2, "b", 300)  # another stream: another lease
    assert await deliveries.hold(1, "a", 300)  # renewed by its holder
    assert not await deliveries.release(1, "b")
    assert await deliveries.release(1, "a")
    assert await deliveries.hold(1, "b", 300)

    # b stopped renewing: a takes the lease once it ran out
    for _ in range(100):
        if await deliveries.hold(1, "a", 300):
            break
        await asyncio.sleep(0.05)
    assert not await deliveries.hold(1, "b", 300)


async def test_parked_batches_keep_their_order_within_the_bound_and_go_one_by_one(store: Store) -> None:
    await store.upload([coupon(f"P{i}", max_usages=10) for i in range(5)])
    for i in range(6):
        await store.allocate(f"user-{i}", CouponType.STANDARD)
    feeds, deliveries = store.feeds, Deliveries(store.ctx, "default")
    await feeds.create(deliveries.group, "start", "webhook")
    events = [e for n in range(feeds.streams) for e in await feeds.read(deliveries.group, "c", n, 100)]
    assert len(events) >= 6
    assert sum([await deliveries.pending(n) for n in range(feeds.streams)]) == len(events)

    dropped = [await deliveries.park(0, [e], "HTTP 500", 1, bound=3) for e in events[:5]]
    assert dropped == [0, 0, 0, 1, 1]
    assert await deliveries.parked_counts() == [3, 0, 0, 0]
    parked = await deliveries.parked(0, 0, 10)
    assert [p.events[0]["id"] for p in parked] == [e.id for e in events[2:5]]
    assert parked[0].reason == "HTTP 500"

    assert await deliveries.unpark(parked[1])
    assert not await deliveries.unpark(parked[1])
    assert [p.events[0]["id"] for p in await deliveries.parked(0, 0, 10)] == [events[2].id, events[4].id]
