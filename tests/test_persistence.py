"""Everything survives a Redis restart from its data dir (AOF, per redis.conf)."""

from __future__ import annotations

from pathlib import Path

from conftest import RedisServer
from factories import coupon
from redis.asyncio import Redis

from coupon_pool.models import CouponType
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store


async def test_coupons_allocations_redemptions_and_counters_survive_a_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "data").start()
    try:
        client = Redis.from_url(server.url, decode_responses=True)
        store = Store(client, Keys("cp"))
        await store.upload([coupon(f"C{i}", max_usages=2) for i in range(5)] + [coupon("F", type="FREE")])
        await store.allocate("alice", CouponType.STANDARD)
        await store.allocate("bob", CouponType.STANDARD)
        await store.redeem("C0", "alice", None)
        before = (await store.stats(), await store.get_coupon("C0"), await store.get_coupon("F"))
        await client.aclose()

        server.stop()
        assert (tmp_path / "data" / "appendonlydir").is_dir()
        server.start()

        client = Redis.from_url(server.url, decode_responses=True)
        store = Store(client, Keys("cp"))
        after = (await store.stats(), await store.get_coupon("C0"), await store.get_coupon("F"))
        assert after == before
        assert (after[1].allocated, after[1].used) == (2, 1)
        # The allocation records survived too: alice's redemption stands, bob's is still open.
        assert (await store.redeem("C0", "bob", None)).used == 2
        await client.aclose()
    finally:
        server.stop()
