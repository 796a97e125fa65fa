"""A user's coupons page by page (user_coupons.lua, Store.user_coupons), where the purge has
deleted some of the coupons the user holds: only `next: null` ends the listing."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from coupon_pool.http.openapi import openapi_document
from coupon_pool.http.routes import OPERATIONS
from coupon_pool.models import CouponType
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store
from coupon_pool.results import UserCouponsPage
from support.factories import coupon

STANDARD = CouponType.STANDARD
SHORT_S = 2  # coupons that are to be purged expire this long after their upload


async def hold_in_order(store: Store, user: str, codes: list[str], short: set[str]) -> None:
    """``user`` is allocated ``codes`` one by one, the last the newest; those in ``short``
    expire SHORT_S after their upload, the others in an hour."""
    for code in codes:
        await store.upload([coupon(code, expires_in=SHORT_S if code in short else 3600)])
        assert (await store.allocate(user, STANDARD)).code == code


async def purge_once_expired(store: Store, count: int) -> None:
    """Purge until ``count`` coupons were deleted (they expire SHORT_S after their upload)."""
    deadline, purged = time.monotonic() + SHORT_S + 30, 0
    while purged < count:
        assert time.monotonic() < deadline, f"only {purged} of {count} coupons purged"
        purged += sum((await store.purge()).purged.values())
        await asyncio.sleep(0.1)


async def walk(store: Store, user: str, limit: int) -> list[UserCouponsPage]:
    pages, after = [], None
    while True:
        pages.append(await store.user_coupons(user, limit, after))
        if pages[-1].next is None:
            return pages
        after = pages[-1].next


async def test_a_first_page_of_purged_coupons_only_is_empty_and_names_the_next(redis: Redis) -> None:
    store = Store(redis, Keys("cp"))
    await hold_in_order(store, "u", ["L1", "L2", "S1", "S2", "S3"], short={"S1", "S2", "S3"})
    await purge_once_expired(store, 3)

    pages = await walk(store, "u", 3)

    assert pages[0].coupons == []  # the page met S3, S2 and S1, all deleted by the purge
    assert pages[0].next is not None
    assert [c.code for page in pages for c in page.coupons] == ["L2", "L1"]


async def test_a_sharded_page_never_passes_a_slot_whose_entries_it_has_not_read(redis: Redis) -> None:
    store = Store(redis, Keys("cp"), shards=4)
    await store.prepare()

    def of_shard(prefix: str, shard: int) -> str:
        return next(f"{prefix}{i}" for i in range(1000) if store.layout.home(f"{prefix}{i}").shard == shard)

    # Newest first: A1 and A2 (to be purged) and A3 in one shard, B1 and B2 in another; the
    # codes sort as the allocations do, so allocations in one millisecond keep that order.
    a1, a2, a3 = of_shard("E", 0), of_shard("D", 0), of_shard("B", 0)
    b1, b2 = of_shard("C", 1), of_shard("A", 1)
    await hold_in_order(store, "u", [b2, a3, b1, a2, a1], short={a1, a2})
    await purge_once_expired(store, 2)

    pages = await walk(store, "u", 2)

    # Shard 0's page read A1 and A2 (deleted) and has more; shard 1's read B1 and B2. A page
    # of B1 and B2 would have passed A3, which lies between them, for good.
    assert [c.code for page in pages for c in page.coupons] == [b1, a3, b2]


def test_the_document_says_only_a_null_next_ends_the_listing() -> None:
    page = openapi_document(OPERATIONS)["components"]["schemas"]["UserCouponsPage"]
    described = page["properties"]["next"]["description"]
    assert "only null ends the listing" in described
    assert "may be empty" in described
