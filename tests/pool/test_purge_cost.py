"""The purge's cost in Redis: no call blocks it long, whatever the expired coupons' holders."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from coupon_pool.models import CouponIn, CouponType, FlatDiscount
from coupon_pool.pool.keys import CouponField, Keys
from coupon_pool.pool.store import Store
from coupon_pool.results import PurgeResult, TypeStats
from coupon_pool.tools.check import check
from support.redis_server import RedisServer

STANDARD, FREE, MEGADEAL = CouponType.STANDARD, CouponType.FREE, CouponType.MEGADEAL
HOLDERS = 160_000
BLOCKED_MS = 10  # the longest Redis may be unavailable to others


class Probe(threading.Thread):
    """PINGs Redis every millisecond on a connection of its own, timing each answer."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = SyncRedis.from_url(url)
        self.done = threading.Event()
        self.waits: list[float] = []

    def run(self) -> None:
        while not self.done.is_set():
            start = time.perf_counter()
            self.client.ping()
            self.waits.append(time.perf_counter() - start)
            time.sleep(0.001)
        self.client.close()

    def stop(self) -> float:
        """The longest wait for a PONG, in ms."""
        self.done.set()
        self.join()
        return max(self.waits) * 1000


@pytest.fixture
async def own_store(tmp_path: Path) -> AsyncIterator[tuple[Store, RedisServer]]:
    """A store on a Redis of its own (redis.conf's), so its slowlog and memory are this test's."""
    server = RedisServer(tmp_path / "redis").start()
    redis = Redis.from_url(server.url, decode_responses=True)
    store = Store(redis, Keys("cp"))
    await store.prepare()
    yield store, server
    await redis.aclose()
    server.stop()


async def expired_with_holders(
    store: Store, codes: list[str], ctype: CouponType, users: list[str], *, max_usages: int, tracked: bool
) -> None:
    """Expired coupons, each held by ``users`` as their allocations would have left it: a
    holder field each, ``alloc``, the type's and the batch's allocated counters, the coupon in
    ``exhausted`` once every usage is held and no held set lists it (``tracked``: all do,
    so it is draining, or has usages left). The users' listings and held sets are left out:
    the purge reads neither."""
    redis, keys = store.redis, store.keys
    expires = datetime.now(UTC) - timedelta(minutes=1)
    discount = FlatDiscount.model_construct(kind="flat", value="5")
    batch = (await store.upload([CouponIn.model_construct(code=code, type=ctype, discount=discount,
                                                          expires_at=expires, max_usages=max_usages)
                                 for code in codes])).batch  # fmt: skip
    score, at = int(expires.timestamp() * 1000), str(int(expires.timestamp() * 1000) - 60_000)
    for code in codes:
        key, pipe = keys.coupon(code), redis.pipeline(transaction=False)
        for start in range(0, len(users), 1000):
            some = users[start : start + 1000]
            pipe.hset(key, mapping={CouponField.HOLDER + u: at for u in some})
            if tracked:
                pipe.sadd(keys.tracked_prefix + code, *some)
        pipe.hset(key, CouponField.ALLOCATED, len(users))
        pipe.hincrby(keys.stats, f"{ctype}:allocated", len(users))
        pipe.hincrby(keys.batch_stats(batch), "allocated", len(users))
        if len(users) == max_usages and tracked:
            pipe.zadd(keys.draining(ctype), {code: score})
        elif len(users) == max_usages:
            pipe.zrem(keys.available(ctype), code)
            pipe.zadd(keys.exhausted, {code: score})
        await pipe.execute()


async def watched_purge(
    store: Store, server: RedisServer, build: Callable[[], Awaitable[None]]
) -> PurgeResult:
    """Build a pool, then purge it while a probe PINGs Redis; fail if the purge blocked Redis:
    a slowlog entry of BLOCKED_MS, or a PING that waited that long.

    On a busy machine a PING may wait 10 ms, and a short call take 10 ms, with nothing
    blocking Redis (20 ms seen on an idle Redis, and 60 ms for a call of 4 ms, while other test
    suites ran beside this one); a purge that blocks Redis does so each time it runs. So the
    test fails when each of three tries saw Redis blocked.
    """
    for _ in range(3):
        await store.redis.flushall()
        await build()
        await store.redis.config_set("slowlog-log-slower-than", BLOCKED_MS * 1000)
        await store.redis.slowlog_reset()
        probe = Probe(server.url)
        probe.start()
        await asyncio.sleep(0.05)
        result = await store.purge()
        await asyncio.sleep(0.3)  # Redis may still be freeing what the purge dropped
        worst = probe.stop()
        assert len(probe.waits) > 50
        slow = [(bytes(e["command"])[:40], e["duration"]) for e in await store.redis.slowlog_get()]  # µs
        blocked = f"a PING waited {worst:.1f} ms, and the slowlog has {slow}"
        if worst < BLOCKED_MS and not slow:
            return result
    raise AssertionError(f"{blocked}, on the third try")


async def purge_batches(store: Store) -> list[int]:
    """The coupons each purge call deleted, from their audit entries."""
    entries = (await store.audit(1000, None)).entries
    extras = [e.model_extra for e in entries if e.op == "purge" and e.model_extra]
    return [sum(int(v) for k, v in extra.items() if k.startswith("purged_")) for extra in extras]


async def test_purging_480k_holders_never_blocks_redis_10_ms(own_store: tuple[Store, RedisServer]) -> None:
    store, server = own_store
    users = [f"user-{i:06d}" for i in range(HOLDERS)]

    async def three_coupons() -> None:
        await expired_with_holders(store, ["EXHAUSTED"], STANDARD, users, max_usages=HOLDERS, tracked=False)
        await expired_with_holders(store, ["DRAINING"], FREE, users, max_usages=HOLDERS, tracked=True)
        await expired_with_holders(store, ["OPEN"], MEGADEAL, users, max_usages=200_000, tracked=True)
        assert (await check(store.redis, store.keys)).violations == []

    result = await watched_purge(store, server, three_coupons)

    assert result.purged == {FREE: 1, STANDARD: 1, MEGADEAL: 1}
    assert result.retired == {FREE: 0, STANDARD: 0, MEGADEAL: 0}
    stats = await store.stats()
    for t in CouponType:  # only "purged" moved
        assert stats.types[t] == TypeStats(
            created=1,
            allocated=HOLDERS,
            used=0,
            released=0,
            rolled_back=0,
            purged=1,
            available=0,
            held=0,
            hold_expired=0,
            scheduled=0,
            disabled=0,
        )
    assert await purge_batches(store) == [1, 1, 1]  # each coupon alone is a call's share
    assert await store.redis.keys("{cp}:c:*") == []
    assert await store.redis.keys("{cp}:trk:*") == []
    assert (await check(store.redis, store.keys)).violations == []


async def test_many_coupons_of_a_few_long_named_holders_never_block_redis_10_ms(
    own_store: tuple[Store, RedisServer],
) -> None:
    """Holders of 126 characters make a hash Redis frees field by field, and 64 holders are
    too few for it to free them in the background: the call's share of holders bounds it."""
    store, server = own_store
    users = ["u" * 120 + f"{i:06d}" for i in range(64)]
    codes = [f"C{i}" for i in range(1000)]

    async def thousand_coupons() -> None:
        await expired_with_holders(store, codes, STANDARD, users, max_usages=100, tracked=True)

    result = await watched_purge(store, server, thousand_coupons)

    assert result.purged[STANDARD] == 1000
    assert (await check(store.redis, store.keys)).violations == []


async def test_a_purge_call_ends_with_the_coupon_that_brings_it_to_5000_holders(
    own_store: tuple[Store, RedisServer],
) -> None:
    store, _ = own_store
    users = [f"user-{i:04d}" for i in range(1200)]
    await expired_with_holders(
        store, [f"C{i}" for i in range(25)], FREE, users, max_usages=1200, tracked=False
    )

    result = await store.purge()

    assert result.purged[FREE] == 25
    assert await purge_batches(store) == [5, 5, 5, 5, 5]
