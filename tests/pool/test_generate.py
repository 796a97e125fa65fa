"""Generation (pool/generation.py): codes drawn by the service, stored by a job that resumes
from what is stored and never stores more than asked, on one Redis and on a cluster."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from coupon_pool.errors import BatchConflict, PoolEmpty
from coupon_pool.models import CouponType, GenerationRequest
from coupon_pool.pool.batches import JobLost
from coupon_pool.pool.generation import JOB_KIND, Spec
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from coupon_pool.tools.check import check
from support import wait_until
from support.factories import coupon

STANDARD, MEGADEAL = CouponType.STANDARD, CouponType.MEGADEAL


def asking(count: int, expires_in: float = 3600, **fields: Any) -> GenerationRequest:
    """A generation request validated as the API validates one."""
    body = {
        "count": count,
        "discount": {"kind": "percent", "value": 10},
        "expires_at": (datetime.now(UTC) + timedelta(seconds=expires_in)).isoformat(),
        **fields,
    }
    if "pattern" not in body and "code_config" not in body:
        body["pattern"] = "G-######"
    return GenerationRequest.model_validate_json(orjson.dumps(body))


async def batch_codes(store: Store, batch: str) -> list[str]:
    """Every code the batch's lists hold, over every slot."""
    codes: list[str] = []
    for k in store.layout.slots:
        codes += [str(c) for c in await store.redis.lrange(k.batch_codes(batch), 0, -1)]
    return codes


class Runner:
    """A runner of the batch's job that holds no lease: it stops (JobLost) after ``renewals``
    renewals, as one whose lease ran out does, or never."""

    def __init__(self, batch: str, renewals: int | None = None) -> None:
        self.kind, self.batch, self.renewals = JOB_KIND, batch, renewals

    async def renew(self, force: bool = False) -> None:
        if self.renewals is not None:
            if self.renewals == 0:
                raise JobLost(self.batch)
            self.renewals -= 1


async def run(store: Store, runner: Runner) -> None:
    await store.batches.runners[JOB_KIND](runner)  # type: ignore[arg-type]


async def test_a_generation_stores_count_distinct_allocatable_codes_of_its_pattern(store: Store) -> None:
    batch = await store.generate(asking(300, pattern="GEN-####-##", batch="spring"))
    assert (batch.batch, batch.source, batch.type) == ("spring", "generation", "STANDARD")
    assert batch.generation is not None
    assert batch.generation.status == "running"
    assert await store.batches.run_jobs() == 1
    done = await store.batches.get("spring")
    assert done.generation is not None
    assert (done.generation.status, done.generation.stored, done.created, done.available) == (
        "done",
        300,
        300,
        300,
    )
    codes = await batch_codes(store, "spring")
    assert len(set(codes)) == 300
    assert all(re.fullmatch(r"GEN-[A-HJ-NP-Z2-9]{4}-[A-HJ-NP-Z2-9]{2}", c) for c in codes)
    allocated = {(await store.allocate(f"u{i}", STANDARD)).code for i in range(300)}
    assert allocated == set(codes)
    with pytest.raises(PoolEmpty):
        await store.allocate("u-last", STANDARD)
    assert (await check(store.redis, store.layout)).violations == []


async def test_code_config_sets_charset_length_prefix_and_postfix(store: Store) -> None:
    config = {"charset": "ab", "length": 12, "prefix": "P_", "postfix": "-x"}
    await store.generate(asking(50, code_config=config, batch="cfg", max_usages=3))
    await store.batches.run_jobs()
    codes = await batch_codes(store, "cfg")
    assert len(set(codes)) == 50
    assert all(re.fullmatch(r"P_[ab]{12}-x", c) for c in codes)
    assert (await store.get_coupon(codes[0])).max_usages == 3


async def test_a_batch_that_exists_is_a_conflict_and_stays_as_it_was(store: Store) -> None:
    await store.upload([coupon("OLD1")], batch="taken")
    with pytest.raises(BatchConflict):
        await store.generate(asking(10, batch="taken"))
    taken = await store.batches.get("taken")
    assert (taken.source, taken.created, taken.generation) == ("upload", 1, None)
    assert await store.batches.run_jobs() == 0


async def test_codes_that_exist_are_drawn_again_never_stored_twice(store: Store) -> None:
    # Half of the 1,000 codes of the pattern exist already, in another batch.
    await store.upload([coupon(f"D-{i:03d}") for i in range(0, 1000, 2)], batch="before")
    await store.generate(asking(100, code_config={"charset": "0123456789", "pattern": "D-###"}, batch="g"))
    await store.batches.run_jobs()
    codes = await batch_codes(store, "g")
    assert len(codes) == len(set(codes)) == 100
    assert all(int(c[2:]) % 2 == 1 for c in codes)  # none of those that existed
    assert (await store.batches.get("before")).created == 500
    assert (await check(store.redis, store.layout)).violations == []


async def test_a_runner_that_lost_its_job_stops_and_the_next_resumes_from_the_stored_count(
    store: Store,
) -> None:
    await store.generate(asking(1000, batch="resumed"))
    with pytest.raises(JobLost):  # part-way, as a runner whose lease ran out
        await run(store, Runner("resumed", renewals=3))
    part = (await store.batches.get("resumed")).created
    assert 0 < part < 1000
    assert await store.batches.run_jobs() == 1
    batch = await store.batches.get("resumed")
    assert batch.generation is not None
    assert (batch.generation.status, batch.created) == ("done", 1000)
    codes = await batch_codes(store, "resumed")
    assert len(codes) == len(set(codes)) == 1000


async def test_runners_at_once_never_store_more_than_count(store: Store) -> None:
    # A runner whose lease ran out with a call in flight, beside the one that took over: each
    # slot's share is enforced by the call that stores, so together they store count exactly.
    await store.generate(asking(777, batch="raced"))
    await asyncio.gather(*(run(store, Runner("raced")) for _ in range(4)))
    batch = await store.batches.get("raced")
    assert batch.created == 777
    codes = await batch_codes(store, "raced")
    assert len(codes) == len(set(codes)) == 777
    # A chunk that lands after the end (its runner's lease ran out while it was in flight).
    generating = store.batches.runners[JOB_KIND].__self__  # type: ignore[attr-defined]
    spec = Spec.of(asking(1))
    for k, quota in generating.quotas(STANDARD, 777):
        made, _, _ = await generating.uploading.store_lines(
            k,
            [f"LATE{i}{spec.line}" for i in range(5)],
            batch="raced",
            part="1/1",
            upload_id="late",
            quota=quota,
        )
        assert made == 0
    assert (await store.batches.get("raced")).created == 777


async def test_a_full_redis_marks_the_generation_failed_with_what_was_stored(redis: Redis) -> None:
    store = Store(redis, Keys("cp"))  # maxmemory is set on the single redis-server alone
    used = int((await store.redis.info("memory"))["used_memory"])
    await store.redis.config_set("maxmemory", used * 2)
    try:
        full = Store(store.redis, Keys("cp"), upload_memory_share=0.4)  # uploads stop below what is used
        await full.generate(asking(100, batch="full"))
        await full.batches.run_jobs()
    finally:
        await store.redis.config_set("maxmemory", 0)
    batch = await store.batches.get("full")
    assert batch.generation is not None
    assert (batch.generation.status, batch.generation.stored, batch.created) == ("failed", 0, 0)
    assert "UPLOAD_MEMORY_SHARE" in (batch.generation.error or "")


async def test_a_generation_whose_coupons_expired_before_it_ran_fails(store: Store) -> None:
    late = asking(10, expires_in=0.5, batch="late")
    await store.generate(late)
    await asyncio.to_thread(wait_until, lambda: datetime.now(UTC) > late.expires_at, 10)
    await store.batches.run_jobs()
    batch = await store.batches.get("late")
    assert batch.generation is not None
    assert (batch.generation.status, batch.created) == ("failed", 0)
    assert "expires_at" in (batch.generation.error or "")


async def test_on_a_sharded_pool_each_shard_takes_its_share(sharded: Store) -> None:
    await sharded.generate(asking(1000, batch="spread", max_redemptions=5))
    await asyncio.gather(*(run(sharded, Runner("spread")) for _ in range(3)))
    assert await sharded.batches.run_jobs() == 1  # the job itself: nothing left to store, marked done
    batch = await sharded.batches.get("spread")
    assert batch.generation is not None
    assert (batch.generation.status, batch.created, batch.max_redemptions) == ("done", 1000, 5)
    for i, k in enumerate(sharded.layout.shards):  # 1,000 over 16 shards: 63 in the first 8, 62 after
        assert await sharded.redis.hget(k.batch_stats("spread"), "created") == ("63" if i < 8 else "62")
        assert await sharded.redis.hget(k.rules, "spread") == "c5"
        listed = [str(c) for c in await sharded.redis.lrange(k.batch_codes("spread"), 0, -1)]
        assert all(sharded.layout.home(c) is k for c in listed)
    codes = await batch_codes(sharded, "spread")
    assert len(codes) == len(set(codes)) == 1000
    allocated = {(await sharded.allocate(f"u{i}", STANDARD)).code for i in range(1000)}
    assert allocated == set(codes)
    assert (await check(sharded.redis, sharded.layout)).violations == []


async def test_megadeal_codes_are_claimed_in_their_shards_and_stored_in_the_main_slot(sharded: Store) -> None:
    await sharded.generate(asking(120, type="MEGADEAL", batch="mega"))
    await sharded.batches.run_jobs()
    batch = await sharded.batches.get("mega")
    assert (batch.type, batch.created) == ("MEGADEAL", 120)
    codes = await sharded.redis.lrange(sharded.layout.main.batch_codes("mega"), 0, -1)
    assert len(set(codes)) == 120
    claimed = 0
    for k in sharded.layout.shards:
        claimed += await sharded.redis.hlen(k.megadeal_claims)
    assert claimed == 120
    assert (await check(sharded.redis, sharded.layout)).violations == []
