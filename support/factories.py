"""Builders for request bodies, validated coupons and prepared stores used across the tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from redis.asyncio import Redis

from coupon_pool.models import CouponIn, CouponType, FlatDiscount
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.store import Store


def coupon_json(
    code: str,
    type: str | None = None,
    expires_in: float = 3600,
    max_usages: int | None = None,
    discount: dict[str, Any] | None = None,
    starts_in: float | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": code,
        "discount": discount or {"kind": "flat", "value": "12.50"},
        "expires_at": (datetime.now(UTC) + timedelta(seconds=expires_in)).isoformat(),
    }
    if type is not None:
        body["type"] = type
    if max_usages is not None:
        body["max_usages"] = max_usages
    if starts_in is not None:
        body["starts_at"] = (datetime.now(UTC) + timedelta(seconds=starts_in)).isoformat()
    if metadata is not None:
        body["metadata"] = metadata
    return body


def coupon(code: str, **kwargs: Any) -> CouponIn:
    """A CouponIn that passed the same validation as an uploaded one."""
    return CouponIn.model_validate_json(orjson.dumps(coupon_json(code, **kwargs)))


def expired_coupon(code: str, type: CouponType = CouponType.STANDARD, ago: float = 60) -> CouponIn:
    """A coupon that expired ``ago`` seconds ago: the store accepts what the API would refuse."""
    return CouponIn.model_construct(
        code=code,
        type=type,
        discount=FlatDiscount.model_construct(kind="flat", value="5"),
        expires_at=datetime.now(UTC) - timedelta(seconds=ago),
        max_usages=1,
    )


async def prepared(redis: Redis, **options: Any) -> Store:
    """A pool in namespace cp on ``redis`` (``options`` as Store takes them), its functions loaded."""
    store = Store(redis, Keys("cp"), **options)
    await store.prepare()
    return store
