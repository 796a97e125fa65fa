"""Redis time of an allocation against what the user already holds, and what it costs in memory.

    python measure/held_cost.py [HELD] [REDIS_URL]     (defaults: 100000, redis://127.0.0.1:6390/0)

Each step in a namespace of its own (held-cost-*), deleted afterwards:
1. HELD + 5,000 STANDARD coupons of 5 usages (so they stay available); HELD of them go to
   one user ("service"), 100 allocations at a time through the auto-pipeline, as under
   load; then 2,000 more allocations to that user and 2,000 to fresh users, each after
   CONFIG RESETSTAT: Redis's own time per FCALL (usec_per_call, no network);
2. memory per allocation (INFO used_memory, audit entries trimmed away): 20,000
   allocations of multi-use coupons (they join the user's held set) and of single-use
   ones (they do not), once to 20,000 new users and once to 20 users (1,000 each);
3. the allocations around a coupon's last usage, when M - 1 users hold it, each with 8
   other coupons first, so every held set lists it (M = 1,000 and 10,000): the one that
   takes the last usage (it cleans 64 held sets, the coupon drains) and the next one (it
   cleans 64 more);
4. an Idempotency-Key record: INFO used_memory around 20,000 keyed allocations, less the
   same without keys, per record (kept IDEMPOTENCY_TTL_S).
It resets the server's command statistics.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta

from memory_per_coupon import used_memory  # this folder: scripts are run as files
from redis.asyncio import Redis

from coupon_pool.models import CouponIn, CouponType, FlatDiscount
from coupon_pool.pool.keyed import Idempotency, fingerprint
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store

AT_ONCE = 100
PROBES = 2000
STANDARD = CouponType.STANDARD


def coupons(count: int, max_usages: int) -> list[CouponIn]:
    expires = datetime.now(UTC) + timedelta(days=30)
    discount = FlatDiscount.model_construct(kind="flat", value="1.50")
    return [
        CouponIn.model_construct(
            code=f"C{i:07d}", type=STANDARD, discount=discount, expires_at=expires, max_usages=max_usages
        )
        for i in range(count)
    ]


async def allocate(store: Store, users: list[str]) -> None:
    for start in range(0, len(users), AT_ONCE):
        await asyncio.gather(*(store.allocate(u, STANDARD) for u in users[start : start + AT_ONCE]))


async def timed(store: Store, users: list[str]) -> float:
    """Redis's own time per allocation script call, in microseconds."""
    await store.redis.config_resetstat()
    await allocate(store, users)
    return float((await store.redis.info("commandstats"))["cmdstat_fcall"]["usec_per_call"])


async def in_namespace(redis: Redis, name: str) -> Store:
    store = Store(redis, Keys(f"held-cost-{name}"), upload_chunk_size=1000, audit_max_len=100)
    await store.prepare()
    return store


async def drop(store: Store) -> None:
    async for key in store.redis.scan_iter(match=store.keys.stats.replace(":stats", "") + "*", count=10_000):
        await store.redis.unlink(key)


async def main(held: int, url: str) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    try:
        store = await in_namespace(redis, "time")
        await store.upload(coupons(held + 5000, 5))
        await allocate(store, ["service"] * held)
        heavy = await timed(store, ["service"] * PROBES)
        fresh = await timed(store, [f"fresh-{i}" for i in range(PROBES)])
        await drop(store)
        print(f"Redis time per allocation: a fresh user {fresh:.1f} us; a user holding {held:,} "
              f"of the type {heavy:.1f} us ({heavy / fresh:.2f}x)")  # fmt: skip

        for max_usages in (5, 1):
            for user_count in (20_000, 20):
                store = await in_namespace(redis, f"memory-{max_usages}-{user_count}")
                await store.upload(coupons(20_000, max_usages))
                before = await used_memory(redis)
                await allocate(store, [f"user-{i % user_count:07d}" for i in range(20_000)])
                await redis.delete(store.keys.audit)
                after = await used_memory(redis)
                await drop(store)
                per = (after - before) / 20_000
                print(f"memory per allocation, coupons of {max_usages} usages, {20_000 // user_count:,} "
                      f"allocations per user: {per:.0f} bytes (audit entry aside)")  # fmt: skip

        for holders in (1000, 10_000):
            store = await in_namespace(redis, f"last-{holders}")
            soon = datetime.now(UTC) + timedelta(days=1)
            fillers = [c.model_copy(update={"code": f"F{i}", "expires_at": soon}) for i, c in
                       enumerate(coupons(8, 10 * holders))]  # fmt: skip
            await store.upload([*fillers, *coupons(1, holders), *coupons(2, 10 * holders)[1:]])
            users = [f"user-{i:07d}" for i in range(holders - 1)]
            for _ in range(9):  # F0-F7, then C0000000
                await allocate(store, users)
            await allocate(store, ["last"] * 8)  # F0-F7
            last = await timed(store, ["last"])  # C0000000's last usage
            following = await timed(store, ["next"])
            draining = await redis.zcard(store.keys.draining(STANDARD))
            await drop(store)
            print(f"a coupon held by {holders - 1:,} users listing it: the allocation taking its last "
                  f"usage {last:,.0f} us, the next {following:,.0f} us; draining: {draining}")  # fmt: skip
        per_allocation = {}
        for keyed in (False, True):
            store = await in_namespace(redis, f"records-{keyed}")
            await store.upload(coupons(10, 100_000))
            before = await used_memory(redis)
            for start in range(0, 20_000, AT_ONCE):
                await asyncio.gather(*(
                    store.keyed(Idempotency(
                        store.keys.idempotency("0123456789ab", fingerprint(b"key", b"%d" % i)),
                        fingerprint(b"POST /v1/allocations\n", b"%d" % i), 86_400_000,
                    ) if keyed else None, store.allocate(f"user-{i:07d}", STANDARD))
                    for i in range(start, start + AT_ONCE)
                ))  # fmt: skip
            await redis.delete(store.keys.audit)
            per_allocation[keyed] = (await used_memory(redis) - before) / 20_000
            await drop(store)
        print(f"an Idempotency-Key record: {per_allocation[True] - per_allocation[False]:.0f} bytes")
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000,
                     sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6390/0"))  # fmt: skip
