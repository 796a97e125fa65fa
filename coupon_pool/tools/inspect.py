"""``coupon-pool inspect CODE``: one coupon as an operator wants it, read straight from Redis.

Dates decoded (Redis keeps epoch milliseconds), the sorted set it sits in (a scheduled
coupon: its type's timers, until its start), its counts, its metadata, and its holders a
page at a time, each with its status (allocated, held, redeemed, hold_expired). A page is
read with one HSCAN: about --limit fields, or the whole hash while it is small enough for
Redis to keep it as a listpack (then the page is a slice of it), so a page costs the same
however many holders the coupon has. The cursor printed for the next page is "<HSCAN
cursor>:<offset in that batch>".
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from typing import Any, cast

import orjson
from redis.asyncio import Redis, RedisCluster

from ..models import CODE_PATTERN, CouponType
from ..pool.codec import from_ms, holder_status, metadata
from ..pool.connection import connect
from ..pool.keys import CouponField, Keys, Layout
from ..settings import Settings
from .common import holder_state, operator_settings

MAX_PAGE = 1000
NOT_FOUND = 3


def when(ms: str | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC."""
    return from_ms(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z") if ms else None


async def inspect(
    redis: Redis, keys: Keys, code: str, limit: int, cursor: str = "0:0"
) -> dict[str, Any] | None:
    """The coupon ``code`` and one page of its holders, or None if there is no such coupon."""
    key = keys.coupon(code)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hmget(key, [f.value for f in CouponField if f is not CouponField.HOLDER])
        pipe.zscore(keys.exhausted, code)
        for coupon_type in CouponType:
            pipe.zscore(keys.available(coupon_type), code)
        for coupon_type in CouponType:
            pipe.zscore(keys.due(coupon_type), code)
        pipe.hlen(key)
        fields, exhausted, *scores, length = await pipe.execute()
    available, starts = scores[: len(CouponType)], scores[len(CouponType) :]
    now_s, now_us = await redis.time()  # not in the pipeline: a cluster pipeline takes keyed commands only
    if fields[0] is None:
        return None
    named = dict(
        zip([f.name.lower() for f in CouponField if f is not CouponField.HOLDER], fields, strict=True)
    )
    scan_from, offset = (int(part) for part in cursor.split(":"))
    scanned = await redis.hscan(key, scan_from, match=f"{CouponField.HOLDER.value}*", count=limit)
    scan_next, batch = cast(tuple[int, dict[str, str]], scanned)
    now_ms = int(now_s) * 1000 + int(now_us) // 1000
    holders = []
    for field, state in batch.items():
        allocated, mark, at = holder_state(state)
        holders.append({"user_id": field[len(CouponField.HOLDER.value) :], "allocated_at": when(allocated),
                        "status": _status(mark, at, now_ms), "redeemed_at": when(at) if mark == ":" else None,
                        "hold_expires_at": when(at) if mark in ("h", "x") else None})  # fmt: skip
    holders.sort(key=lambda h: (h["allocated_at"] or "", h["user_id"]))
    page = holders[offset : offset + limit]
    if offset + limit < len(holders):
        next_cursor: str | None = f"{scan_from}:{offset + limit}"
    else:
        next_cursor = f"{scan_next}:0" if int(scan_next) else None
    expired = int(named["expires"]) <= now_ms
    ctype = CouponType(named["type"])
    batch = named["batch"]
    rules = cast(str | None, await redis.hget(keys.rules, batch)) if batch else None
    batch_disabled = rules is not None and rules.startswith("d")
    disabled = named["disabled"] is not None or batch_disabled
    free = int(named["allocated"] or 0) < int(named["max_usages"])
    scheduled = any(score is not None for score in starts)
    in_set = (
        f"{keys.due(ctype)} (scheduled: it joins {keys.available(ctype)} at its start)"
        if scheduled
        else f"{keys.available(ctype)} (available)"
        if any(score is not None for score in available)
        else f"{keys.exhausted} (set aside: disabled)"
        if exhausted is not None and free and disabled
        else f"{keys.exhausted} (no free usage)"
        if exhausted is not None
        else "none: retired by the purge (expired after a redemption)"
    )
    return {
        "code": code,
        "key": key,
        "node": await _node_of(redis, key),
        "type": named["type"],
        "discount": {"kind": named["discount_kind"], "value": named["discount_value"]},
        "created_at": when(named["created"]),
        "expires_at": when(named["expires"]),
        "expired": expired,
        "starts_at": when(named["starts"]),
        "scheduled": scheduled,
        "metadata": metadata(named["metadata"]),
        "batch": batch,
        "disabled": disabled,
        "disabled_on_its_own": named["disabled"] is not None,
        "batch_disabled": batch_disabled,
        "max_usages": int(named["max_usages"]),
        "allocated": int(named["allocated"] or 0),  # a missing counter field means zero
        "used": int(named["used"] or 0),
        "in_set": in_set,
        "holders_total": length - (len(fields) - fields.count(None)),
        "holders": page,
        "limit": limit,
        "next_cursor": next_cursor,
    }


def render(coupon: dict[str, Any]) -> str:
    discount = coupon["discount"]
    shown = f"{discount['value']}%" if discount["kind"] == "percent" else f"{discount['value']} off"
    lines = [
        f"coupon {coupon['code']}   (redis-cli{' -c' if coupon['node'] else ''}: HGETALL {coupon['key']})",
        *([f"  node        {coupon['node']} (the master of its slot)"] if coupon["node"] else []),
        f"  type        {coupon['type']}",
        f"  discount    {shown}",
        f"  created     {coupon['created_at']}",
        f"  expires     {coupon['expires_at']}" + ("   EXPIRED" if coupon["expired"] else ""),
        *(
            [f"  starts      {coupon['starts_at']}" + ("   SCHEDULED" if coupon["scheduled"] else "")]
            if coupon["starts_at"]
            else []
        ),
        *([f"  metadata    {orjson.dumps(coupon['metadata']).decode()}"] if coupon["metadata"] else []),
        *(
            [f"  batch       {coupon['batch']}" + ("   DISABLED" if coupon["batch_disabled"] else "")]
            if coupon["batch"]
            else []
        ),
        *(
            ["  DISABLED    on its own: never allocated, not redeemable"]
            if coupon["disabled_on_its_own"]
            else []
        ),
        f"  usages      {coupon['allocated']} allocated, {coupon['used']} redeemed, "
        f"of {coupon['max_usages']}",
        f"  in set      {coupon['in_set']}",
        f"  holders     {coupon['holders_total']}" + (", this page:" if coupon["holders"] else ""),
    ]
    for holder in coupon["holders"]:
        status = _STATUS_SHOWN[holder["status"]].format(**holder)
        lines.append(f"    {holder['user_id']:<32} allocated {holder['allocated_at']}   {status}")
    if coupon["next_cursor"]:
        lines.append(f"  more holders: coupon-pool inspect {coupon['code']} --limit {coupon['limit']} "
                     f"--cursor {coupon['next_cursor']}")  # fmt: skip
    return "\n".join(lines)


_STATUS_SHOWN = {
    "allocated": "not redeemed",
    "redeemed": "redeemed {redeemed_at}",
    "held": "held until {hold_expires_at}",
    "hold_expired": "hold expired {hold_expires_at}",
}


def _status(mark: str, at: str, now_ms: int) -> str:
    """A holder's status, as GET /v1/coupons/{code} says it (codec.holder_status)."""
    if mark == "?":
        return "malformed"  # common.holder_state: `coupon-pool check` says what is wrong
    return holder_status(mark, at, now_ms)


def _code(text: str) -> str:
    if not re.fullmatch(CODE_PATTERN, text):
        raise argparse.ArgumentTypeError("a code is 1-64 characters of A-Z a-z 0-9 _ -")
    return text


def _cursor(text: str) -> str:
    if not re.fullmatch(r"[0-9]{1,20}:[0-9]{1,4}", text):
        raise argparse.ArgumentTypeError("a cursor is what a previous page printed, such as 1536:0")
    return text


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"must be 1-{MAX_PAGE}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="coupon-pool inspect",
        description="Show one coupon from REDIS_URL (namespace KEY_NAMESPACE): dates decoded, holders "
        "a page at a time. Exit 3 when there is no such coupon.",
    )
    parser.add_argument("code", type=_code)
    parser.add_argument("--limit", type=_limit, default=50, help="most holders per page, 1-1000 (default 50)")
    parser.add_argument("--cursor", type=_cursor, default="0:0", help="the cursor a previous page printed")
    parser.add_argument("--json", action="store_true", help="print the coupon as JSON")
    args = parser.parse_args(argv)
    settings = operator_settings("coupon-pool inspect")
    if settings is None:
        return 2
    coupon = asyncio.run(_run(settings, args))
    if coupon is None:
        print(f"coupon-pool inspect: there is no coupon {args.code!r}", file=sys.stderr)
        return NOT_FOUND
    print(orjson.dumps(coupon, option=orjson.OPT_INDENT_2).decode() if args.json else render(coupon))
    return 0


async def _node_of(redis: Redis, key: str) -> str | None:
    """On a cluster, the master that holds ``key`` (host:port); None on a single Redis."""
    if not isinstance(redis, RedisCluster):
        return None
    await redis.initialize()
    return str(redis.get_node_from_key(key).name)


async def _run(settings: Settings, args: argparse.Namespace) -> dict[str, Any] | None:
    """The coupon from its slot: its code's shard, else (a MEGADEAL coupon) the main slot."""
    redis = connect(settings, 2, settings.redis_timeout_s)
    layout = Layout(settings.key_namespace, settings.pool_shards)
    try:
        for keys in dict.fromkeys([layout.home(args.code), layout.main]):
            found = await inspect(redis, keys, args.code, args.limit, args.cursor)
            if found is not None:
                return found
        return None
    finally:
        await redis.aclose()
