"""Everything survives a Redis restart from its data dir (AOF, per redis.conf)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis import Redis as SyncRedis
from redis.asyncio import Redis

from coupon_pool.models import CouponType
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.library import LIBRARY
from coupon_pool.pool.store import Store
from support.factories import coupon
from support.redis_server import RedisServer


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


def library_names(client: SyncRedis) -> set[str]:
    return {dict(zip(lib[::2], lib[1::2], strict=True))["library_name"] for lib in client.function_list()}


async def test_the_function_library_survives_a_sigkill_and_a_restart_from_the_aof(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "data").start()
    try:
        client = Redis.from_url(server.url, decode_responses=True)
        store = Store(client, Keys("cp"))
        await store.prepare()
        await store.upload([coupon("C1", max_usages=5)])
        await client.bgrewriteaof()  # the AOF's base file now holds the library, as after any rewrite
        for _ in range(1000):  # done within 10 s
            if not (await client.info("persistence"))["aof_rewrite_in_progress"]:
                break
            await asyncio.sleep(0.01)
        await client.aclose()

        server.kill()  # no shutdown: only what the AOF holds comes back
        server.start()
        with SyncRedis(port=server.port, decode_responses=True) as raw:
            assert LIBRARY.name in library_names(raw)  # before any call could load it again
            raw.config_resetstat()
        client = Redis.from_url(server.url, decode_responses=True)
        store = Store(client, Keys("cp"))  # not prepared: it calls what Redis has
        assert (await store.allocate("alice", CouponType.STANDARD)).code == "C1"
        stats = await client.info("commandstats")
        assert "cmdstat_function|load" not in stats  # nothing was loaded again
        await client.aclose()
    finally:
        server.stop()
