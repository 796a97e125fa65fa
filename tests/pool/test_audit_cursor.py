"""The audit trail's cursor on a sharded pool (cursor.py): following pages while writes go on
returns every entry exactly once; the cursor is opaque, checked, and bound to its pool."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from coupon_pool import cursor
from coupon_pool.models import CouponType
from coupon_pool.pool.store import Store
from support.cluster import CLUSTER_SHARDS
from support.factories import coupon, prepared

_PART = st.integers(0, 2**64 - 1)


@given(
    st.lists(st.tuples(_PART, _PART).filter(lambda p: p != (2**64 - 1, 2**64 - 1)), min_size=1, max_size=257)
)
def test_a_cursor_reads_back_as_the_positions_it_was_made_of(positions: list[cursor.Position]) -> None:
    text = cursor.encode(positions)
    assert len(text) <= cursor.MAX_LENGTH
    assert cursor.decode(text) == positions


@pytest.mark.parametrize(
    "text", ["c1.", "c1.!!!!", "c1.gA", "c1.AAA", "c2.AAAA", "c1." + "_" * 20, "c1." + "A" * 7000]
)
def test_a_cursor_the_service_did_not_write_is_refused(text: str) -> None:
    with pytest.raises(cursor.CursorError):
        cursor.decode(text)


def test_an_entry_id_starts_after_itself_in_merge_order() -> None:
    # Streams up to the entry's own are read after its id; those after it, from its id on.
    assert cursor.from_entry_id("5-2-1", 3) == [(5, 2), (5, 2), (5, 1)]
    assert cursor.from_entry_id("5-0-0", 2) == [(5, 0), (4, 2**64 - 1)]
    assert cursor.from_entry_id("0-0-0", 2) == [(0, 0), (0, 0)]


@pytest.fixture
async def sixteen(redis: Redis) -> Store:
    return await prepared(redis, shards=16, upload_chunk_size=100)


@pytest.fixture(params=["sixteen", "sharded"])  # 16 shards on one Redis, or the cluster's (conftest.py)
def pool(request: pytest.FixtureRequest) -> Store:
    store: Store = request.getfixturevalue(request.param)
    return store


async def test_following_the_trail_while_writers_write_returns_every_entry_once(pool: Store) -> None:
    await pool.upload([coupon(f"F{i:04d}", max_usages=100) for i in range(64)])
    written = {
        f"{i}-{n}" for n, k in enumerate(pool.layout.slots) for i, _ in await pool.redis.xrange(k.audit)
    }
    start = (await pool.audit(1, None)).next  # after every entry written so far
    assert start is not None
    seen: list[str] = []
    writing = True

    async def writer(w: int) -> None:
        for i in range(40):
            await pool.allocate(f"user-{w}-{i}", CouponType.STANDARD)

    async def follow(after: str | None) -> str | None:
        while True:
            page = await pool.audit(7, after)
            seen.extend(e.id for e in page.entries)
            after = page.next
            if not page.entries and not writing:
                return after
            await asyncio.sleep(0)

    following = asyncio.create_task(follow(start))
    await asyncio.gather(*(writer(w) for w in range(8)))
    writing = False
    await following

    trail = {f"{i}-{n}" for n, k in enumerate(pool.layout.slots) for i, _ in await pool.redis.xrange(k.audit)}
    assert len(seen) == len(set(seen))
    assert set(seen) == trail - written
    assert len(seen) == 320  # an allocation's entry each


async def test_a_sharded_pools_next_is_a_cursor_of_its_own_slots(client: httpx.AsyncClient) -> None:
    await client.post("/v1/allocations", json={"user_id": "u"})  # pool_empty: one entry
    page = (await client.get("/v1/audit", params={"limit": 1})).json()
    sharded = page["entries"][0]["id"].count("-") == 2
    assert page["next"].startswith("c1.") == sharded
    slots = CLUSTER_SHARDS + 1 if sharded else 1
    refused = ["c1.", "c1.!!!!", "c1." + "A" * 7000, cursor.encode([(1, 2)] * (slots + 1))]
    for after in refused + ([cursor.encode([(1, 2)] * 17)] if not sharded else []):
        response = await client.get("/v1/audit", params={"after": after})
        assert response.status_code == 422, after
        assert [e["field"] for e in response.json()["errors"]] == ["after"], after
    if sharded:
        following = await client.get("/v1/audit", params={"after": page["next"]})
        assert following.json() == {"entries": [], "next": page["next"]}
        from_start = (await client.get("/v1/audit", params={"after": cursor.encode([(0, 0)] * slots)})).json()
        ids = [e["id"] for e in from_start["entries"]]  # the pool's start-up entries, then the last
        assert ids[-1] == page["entries"][0]["id"]
        assert len(ids) == len(set(ids))
