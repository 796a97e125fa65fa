"""Redis time per allocation on each master of a Redis Cluster, each master's share, and the
same on a single Redis: the figures of the capacity model in docs/benchmarks.md.

    python measure/cluster_cost.py [N] [SHARDS]     (defaults: 30000, 16)

Starts a cluster of its own (support/cluster.py: three masters and three replicas on free
loopback ports) and a single redis-server, uploads 300 STANDARD coupons of 1,000,000
usages to each, then makes N allocations to new users through Store.allocate, 100 at a
time (auto-pipelined, as under load), after CONFIG RESETSTAT on every master. Redis's own
time per FCALL (INFO commandstats usec_per_call), without the network; the guard key
and the shard choice included. Then uploads 100,000 more coupons and reports the memory
they take per coupon (used_memory, summed over the masters). Stops what it started.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis import Redis as SyncRedis
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # support/, when run as a file
from coupon_pool.models import CouponIn, CouponType, FlatDiscount
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from support.cluster import Cluster, cluster_client, free_cluster_port

AT_ONCE = 100
REPO = Path(__file__).resolve().parent.parent


def coupons() -> list[CouponIn]:
    expires = datetime.now(UTC) + timedelta(days=30)
    discount = FlatDiscount.model_construct(kind="flat", value="1.50")
    return [
        CouponIn.model_construct(
            code=f"COST-{i}",
            type=CouponType.STANDARD,
            discount=discount,
            expires_at=expires,
            max_usages=1_000_000,
        )
        for i in range(300)
    ]


async def allocate(store: Store, count: int) -> float:
    """Allocations per second, in this process (one client, as one app worker)."""
    start = time.perf_counter()
    for first in range(0, count, AT_ONCE):
        users = range(first, min(first + AT_ONCE, count))
        await asyncio.gather(*(store.allocate(f"cost-{u}", CouponType.STANDARD) for u in users))
    return count / (time.perf_counter() - start)


MEMORY_COUPONS = 100_000


async def bytes_per_coupon(store: Store, ports: list[int]) -> float:
    def used() -> int:
        total = 0
        for port in ports:
            with SyncRedis(port=port, decode_responses=True) as c:
                total += int(c.info("memory")["used_memory"])
        return total

    expires = datetime.now(UTC) + timedelta(days=30)
    discount = FlatDiscount.model_construct(kind="flat", value="1.50")
    batch = [
        CouponIn.model_construct(
            code=f"MEM-{i:07d}", type=CouponType.STANDARD, discount=discount, expires_at=expires, max_usages=1
        )
        for i in range(MEMORY_COUPONS)
    ]
    before = used()
    await store.upload(batch)
    return (used() - before) / MEMORY_COUPONS


def fcall(port: int) -> tuple[int, float]:
    with SyncRedis(port=port, decode_responses=True) as c:
        stats = c.info("commandstats").get("cmdstat_fcall", {})
        return int(stats.get("calls", 0)), float(stats.get("usec_per_call", 0.0))


async def on_cluster(count: int, shards: int) -> None:
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="cluster-cost-"))).start()
    try:
        client = cluster_client(cluster)
        store = Store(client, Keys("cp"), shards=shards, upload_chunk_size=1000)
        await store.prepare()
        await store.upload(coupons())
        masters = cluster.masters()
        for node in masters:
            with node.client() as c:
                c.config_resetstat()
        rate = await allocate(store, count)
        per_master = [(node.port, *fcall(node.port)) for node in masters]
        size = await bytes_per_coupon(store, [n.port for n in masters])
        await client.aclose()
        print(f"cluster, {len(masters)} masters, {shards} shards: {rate:,.0f} allocations/s from one "
              f"process; {size:.0f} bytes per stored coupon")  # fmt: skip
        for port, calls, usec in per_master:
            print(f"  master {port}: {calls} calls ({calls / count:.1%}), {usec:.2f} us per call, "
                  f"{1e6 / usec:,.0f} allocations/s per master at 100% of its core")  # fmt: skip
    finally:
        cluster.stop()


def start_single() -> tuple[subprocess.Popen[bytes], int]:
    port = free_cluster_port(set())
    data = tempfile.mkdtemp(prefix="single-cost-")
    server = subprocess.Popen(
        ["redis-server", str(REPO / "redis.conf"), "--port", str(port), "--dir", data,
         "--appendonly", "no", "--logfile", f"{data}/redis.log"],
    )  # fmt: skip
    time.sleep(0.5)
    return server, port


async def on_single(count: int) -> None:
    server, port = start_single()
    try:
        client = Redis(port=port, decode_responses=True)
        store = Store(client, Keys("cp"), upload_chunk_size=1000)
        await store.prepare()
        await store.upload(coupons())
        await client.config_resetstat()
        rate = await allocate(store, count)
        calls, usec = fcall(port)
        size = await bytes_per_coupon(store, [port])
        await client.aclose()
        print(f"single Redis, one shard: {rate:,.0f} allocations/s from one process; {calls} calls, "
              f"{usec:.2f} us per call; {size:.0f} bytes per stored coupon")  # fmt: skip
    finally:
        server.kill()


if __name__ == "__main__":
    args = sys.argv[1:]
    n = int(args[0]) if args else 30_000
    asyncio.run(on_single(n))
    asyncio.run(on_cluster(n, int(args[1]) if len(args) > 1 else 16))
    asyncio.run(on_single(n))
