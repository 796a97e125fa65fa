"""Exporting a batch (pool/exporting.py): every coupon of the batch as stored, stretch by stretch."""

from __future__ import annotations

import pytest

from coupon_pool.errors import BatchNotFound
from coupon_pool.models import CouponIn, CouponType
from coupon_pool.pool import exporting
from coupon_pool.pool.store import Store
from coupon_pool.results import ExportedCoupon
from support.cluster import CLUSTER_SHARDS
from support.factories import coupon, expired_coupon

STANDARD, FREE, MEGADEAL = CouponType.STANDARD, CouponType.FREE, CouponType.MEGADEAL


async def exported(store: Store, batch: str, *, expired: bool = False) -> list[ExportedCoupon]:
    return [row async for stretch in await store.export(batch, expired=expired) for row in stretch]


async def test_an_export_gives_each_coupon_of_the_batch_as_it_is_stored(store: Store) -> None:
    coupons = [
        coupon("A1", max_usages=3, metadata={"campaign": "spring", "note": "é"}),
        coupon("A2", type="FREE", discount={"kind": "percent", "value": "12.50"}, starts_in=600),
        coupon("A3", type="MEGADEAL", discount={"kind": "percent", "value": 100}),
    ]
    await store.upload(coupons, batch="spring")
    await store.upload([coupon("OTHER")], batch="autumn")
    await store.allocate("alice", STANDARD)
    await store.redeem("A1", "alice", None)
    await store.allocate("bob", STANDARD)
    await store.batches.switch("A3", None, disable=True)

    rows = {row.code: row for row in await exported(store, "spring")}

    assert set(rows) == {"A1", "A2", "A3"}
    for given in coupons:
        row = rows[given.code]
        assert (row.type, row.discount, row.max_usages) == (given.type, given.discount, given.max_usages)
        assert abs((row.expires_at - given.expires_at).total_seconds()) < 0.001
        assert (row.starts_at is None) == (given.starts_at is None)
        assert row.created_at <= row.expires_at
    assert (rows["A1"].allocated, rows["A1"].used, rows["A1"].disabled) == (2, 1, False)
    assert rows["A1"].metadata_json.encode() == b'{"campaign":"spring","note":"\xc3\xa9"}'
    assert (rows["A2"].allocated, rows["A2"].metadata_json) == (0, "{}")
    assert rows["A3"].disabled


async def test_an_unknown_batch_is_refused_before_any_stretch(store: Store) -> None:
    await store.upload([coupon("A1")], batch="spring")
    with pytest.raises(BatchNotFound):
        await store.export("summer")


async def test_a_batch_larger_than_a_stretch_comes_in_stretches_in_upload_order(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exporting, "EXPORT_STRETCH", 7)
    codes = [f"C{i:03d}" for i in range(40)]
    await store.upload([coupon(c) for c in codes], batch="big")

    stretches = [stretch async for stretch in await store.export("big")]

    assert [row.code for stretch in stretches for row in stretch] == codes
    assert max(len(stretch) for stretch in stretches) <= 7
    assert len(stretches) >= 6


async def test_a_disabled_batch_exports_every_coupon_as_disabled(store: Store) -> None:
    await store.upload([coupon("A1"), coupon("A2")], batch="leaked")
    await store.batches.set_rules("leaked", disabled=True)

    assert [row.disabled for row in await exported(store, "leaked")] == [True, True]


async def test_expired_coupons_are_left_out_unless_asked_for(store: Store) -> None:
    await store.upload([coupon("LIVE"), expired_coupon("OLD")], batch="mixed")

    assert [row.code for row in await exported(store, "mixed")] == ["LIVE"]
    assert [row.code for row in await exported(store, "mixed", expired=True)] == ["LIVE", "OLD"]


async def test_a_purged_code_stored_again_in_another_batch_is_exported_with_that_batch_only(
    store: Store,
) -> None:
    await store.upload([expired_coupon("AGAIN"), coupon("KEPT")], batch="first")
    await store.purge()
    await store.upload([coupon("AGAIN")], batch="second")

    assert [row.code for row in await exported(store, "first", expired=True)] == ["KEPT"]
    assert [row.code for row in await exported(store, "second")] == ["AGAIN"]


async def test_an_empty_batch_exports_nothing(store: Store) -> None:
    await store.upload([coupon("A1")], batch="full")
    await store.upload([coupon("A1")], batch="empty")  # a duplicate: the batch stays empty

    assert await exported(store, "empty") == []


async def test_a_sharded_batch_is_exported_from_every_shard(
    sharded: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exporting, "EXPORT_STRETCH", 5)
    coupons: list[CouponIn] = [coupon(f"S{i:03d}") for i in range(150)]
    coupons += [coupon(f"F{i:02d}", type="FREE") for i in range(30)]
    coupons += [coupon(f"M{i}", type="MEGADEAL") for i in range(6)]
    await sharded.upload(coupons, batch="wide")
    await sharded.upload([coupon("X1"), coupon("X2", type="MEGADEAL")], batch="other")

    rows = await exported(sharded, "wide")

    assert sorted(row.code for row in rows) == sorted(c.code for c in coupons)
    by_code = {row.code: row.type for row in rows}
    assert all(by_code[c.code] == c.type for c in coupons)
    holding = [await sharded.redis.llen(k.batch_codes("wide")) for k in sharded.layout.slots]
    assert sum(1 for n in holding if n) > CLUSTER_SHARDS // 2  # the walk did cross the shards


async def test_a_code_purged_and_stored_again_in_its_batch_is_exported_once(store: Store) -> None:
    await store.upload([expired_coupon("AGAIN"), coupon("STAYS")], batch="twice")
    await store.purge()  # AGAIN goes; its entry stays in the batch's list
    await store.upload([coupon("AGAIN", max_usages=4)], batch="twice")

    rows = await exported(store, "twice")

    assert sorted(row.code for row in rows) == ["AGAIN", "STAYS"]
    assert next(row for row in rows if row.code == "AGAIN").max_usages == 4
