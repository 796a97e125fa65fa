"""The purge's cost in Redis: no call blocks it long, whatever the expired coupons' holders."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import RedisServer
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from coupon_pool.models import CouponIn, CouponType, FlatDiscount
from coupon_pool.pool.keys import CouponField, Keys
from coupon_pool.pool.store import Store
from coupon_pool.tools.check import check

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
    store: Store, code: str, ctype: CouponType, holders: int, *, max_usages: int, tracked: bool
) -> None:
    """An expired coupon held by ``holders`` users, as their allocations would have left it:
    a holder field each, ``alloc`` and the type's allocated counter, the coupon in
    ``exhausted`` once every usage is held and no held set lists it (``tracked``: all do,
    so it is draining, or has usages left). The users' listings and held sets are left out:
    the purge reads neither."""
    redis, keys = store.redis, store.keys
    expires = datetime.now(UTC) - timedelta(minutes=1)
    discount = FlatDiscount.model_construct(kind="flat", value="5")
    await store.upload([CouponIn.model_construct(code=code, type=ctype, discount=discount,
                                                 expires_at=expires, max_usages=max_usages)])  # fmt: skip
    key, at = keys.coupon(code), str(int(expires.timestamp() * 1000) - 60_000)
    pipe = redis.pipeline(transaction=False)
    for start in range(0, holders, 1000):
        users = [f"user-{i:06d}" for i in range(start, min(holders, start + 1000))]
        pipe.hset(key, mapping={CouponField.HOLDER + u: at for u in users})
        if tracked:
            pipe.sadd(keys.tracked_prefix + code, *users)
    pipe.hset(key, CouponField.ALLOCATED, holders)
    pipe.hincrby(keys.stats, f"{ctype}:allocated", holders)
    await pipe.execute()
    score = int(await redis.hget(key, CouponField.EXPIRES) or 0)
    if holders == max_usages and tracked:
        await redis.zadd(keys.draining(ctype), {code: score})
    elif holders == max_usages:
        await redis.zrem(keys.available(ctype), code)
        await redis.zadd(keys.exhausted, {code: score})


async def test_purging_480k_holders_never_blocks_redis_10_ms(own_store: tuple[Store, RedisServer]) -> None:
    store, server = own_store
    redis = store.redis
    await expired_with_holders(store, "EXHAUSTED", STANDARD, HOLDERS, max_usages=HOLDERS, tracked=False)
    await expired_with_holders(store, "DRAINING", FREE, HOLDERS, max_usages=HOLDERS, tracked=True)
    await expired_with_holders(store, "OPEN", MEGADEAL, HOLDERS, max_usages=200_000, tracked=True)
    assert (await check(redis, store.keys)).violations == []
    before = await store.stats()
    await redis.config_set("slowlog-log-slower-than", BLOCKED_MS * 1000)
    await redis.slowlog_reset()

    probe = Probe(server.url)
    probe.start()
    await asyncio.sleep(0.05)
    result = await store.purge()
    await asyncio.sleep(0.3)  # Redis may still be freeing what the purge dropped
    worst = probe.stop()
    slow = await redis.slowlog_get()

    assert len(probe.waits) > 50
    slowest = [(bytes(e["command"])[:40], e["duration"]) for e in slow]  # call, µs
    blocked = f"a PING waited {worst:.1f} ms; slowlog: {slowest}"
    assert worst < BLOCKED_MS, blocked
    assert slowest == [], blocked
    assert result.purged == {FREE: 1, STANDARD: 1, MEGADEAL: 1}
    assert result.retired == {FREE: 0, STANDARD: 0, MEGADEAL: 0}
    after = await store.stats()
    for t in CouponType:
        assert after.types[t] == before.types[t].model_copy(update={"purged": before.types[t].purged + 1})
    assert await redis.keys("{cp}:c:*") == []
    assert await redis.keys("{cp}:trk:*") == []
    assert (await check(redis, store.keys)).violations == []
