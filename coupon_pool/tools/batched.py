"""Reads of many keys in few round trips, with every Redis call small.

A tool that walks a whole pool must never hold Redis for long: a call that returns a large
sorted set or hash whole (ZRANGE 0 -1, HGETALL) holds it while the reply is built, about
25 ms per 100,000 entries, and every other client waits. Here sizes are read first
(ZCARD, HLEN, SCARD: constant time), then every call returns at most PAGE entries and a
pipeline at most BUDGET in all, about a millisecond of Redis time; Redis serves other
clients between pipelines (and between the 16 KiB reads of a long one). Calls of constant
time go MAX_CALLS to a pipeline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

PAGE = 1000  # entries per call
FIRST = 10  # entries read of each sorted set before its size is known
BUDGET = 5000  # entries per pipeline
MAX_CALLS = 1000  # calls of constant time per pipeline
SCAN_COUNT = 1000  # keys SCAN looks at per call

T = TypeVar("T")


async def each(
    redis: Redis,
    items: Sequence[T],
    queue: Callable[[Pipeline, T], object],
    calls_per_item: int = 1,
    entries_per_item: int = 1,
) -> list[Any]:
    """The replies of the calls ``queue`` adds for each item, in order: constant-time calls,
    or calls of at most ``entries_per_item`` entries in all."""
    step = max(1, min(MAX_CALLS // calls_per_item, BUDGET // entries_per_item))
    replies: list[Any] = []
    for start in range(0, len(items), step):
        pipe = redis.pipeline(transaction=False)
        for item in items[start : start + step]:
            queue(pipe, item)
        replies += await pipe.execute()
    return replies


async def keys_under(redis: Redis, prefix: str) -> AsyncIterator[str]:
    """Every key whose name starts with ``prefix`` (SCAN: a few thousand keys looked at a call)."""
    async for key in redis.scan_iter(match=_escape(prefix) + "*", count=SCAN_COUNT):
        yield key


async def sorted_sets(redis: Redis, keys: Sequence[str]) -> dict[str, list[tuple[str, float]]]:
    """Each sorted set's members with their scores, in order; an absent key has none.

    Most sets a pool has per user are small: their first FIRST entries are read at once,
    and only a set that fills them is measured (ZCARD) and read on by pages.
    """
    firsts = await each(redis, keys, lambda pipe, key: pipe.zrange(key, 0, FIRST - 1, withscores=True),
                        entries_per_item=FIRST)  # fmt: skip
    found: dict[str, list[tuple[str, float]]] = dict(zip(keys, firsts, strict=True))
    larger = [key for key, members in found.items() if len(members) == FIRST]
    cards: list[int] = await each(redis, larger, lambda pipe, key: pipe.zcard(key))
    pages = [(key, start, min(PAGE, card - start)) for key, card in zip(larger, cards, strict=True)
             for start in range(FIRST, card, PAGE)]  # fmt: skip
    for group in _within_budget(pages):
        pipe = redis.pipeline(transaction=False)
        for key, start, size in group:
            pipe.zrange(key, start, start + size - 1, withscores=True)
        for (key, _, _), members in zip(group, await pipe.execute(), strict=True):
            found[key] += cast(list[tuple[str, float]], members)
    return found


async def hashes(redis: Redis, keys: Sequence[str]) -> dict[str, dict[str, str]]:
    """Each hash's fields; an absent key has none. A hash over PAGE fields is read by HSCAN."""
    found: dict[str, dict[str, str]] = {key: {} for key in keys}
    for key, fields in await _whole(redis, keys, "hlen", "hgetall", "hscan"):
        found[key].update(fields)
    return found


async def set_members(redis: Redis, keys: Sequence[str]) -> dict[str, set[str]]:
    """Each set's members; an absent key has none. A set over PAGE members is read by SSCAN."""
    found: dict[str, set[str]] = {key: set() for key in keys}
    for key, members in await _whole(redis, keys, "scard", "smembers", "sscan"):
        found[key].update(members)
    return found


async def _whole(redis: Redis, keys: Sequence[str], size: str, read: str, scan: str) -> list[tuple[str, Any]]:
    """(key, part) of every non-empty key: whole in one ``read`` when ``size`` says it holds at
    most PAGE entries, else page by page with ``scan`` (pipeline methods, by name)."""
    sizes: list[int] = await each(redis, keys, lambda pipe, key: getattr(pipe, size)(key))
    small = [(key, 0, n) for key, n in zip(keys, sizes, strict=True) if 0 < n <= PAGE]
    parts: list[tuple[str, Any]] = []
    for group in _within_budget(small):
        pipe = redis.pipeline(transaction=False)
        for key, _, _ in group:
            getattr(pipe, read)(key)
        parts += [(key, part) for (key, _, _), part in zip(group, await pipe.execute(), strict=True)]
    large = [key for key, n in zip(keys, sizes, strict=True) if n > PAGE]
    return parts + await _scanned(redis, large, scan)


async def _scanned(redis: Redis, keys: list[str], command: str) -> list[tuple[str, Any]]:
    """(key, page) of HSCAN or SSCAN, COUNT PAGE, every large key's cursor followed to its end."""
    pages: list[tuple[str, Any]] = []
    cursors = dict.fromkeys(keys, 0)
    at_once = BUDGET // PAGE
    while cursors:
        batch = list(cursors.items())[:at_once]
        pipe = redis.pipeline(transaction=False)
        for key, cursor in batch:
            getattr(pipe, command)(key, cursor, count=PAGE)
        for (key, _), (cursor, page) in zip(batch, await pipe.execute(), strict=True):
            pages.append((key, page))
            if int(cursor):
                cursors[key] = int(cursor)
            else:
                del cursors[key]
    return pages


def _within_budget(pages: list[tuple[str, int, int]]) -> list[list[tuple[str, int, int]]]:
    """(key, start, size) pages grouped so that no group holds more than BUDGET entries (a
    single page may, up to PAGE) or MAX_CALLS pages."""
    groups: list[list[tuple[str, int, int]]] = []
    group: list[tuple[str, int, int]] = []
    entries = 0
    for page in pages:
        if group and (entries + page[2] > BUDGET or len(group) == MAX_CALLS):
            groups.append(group)
            group, entries = [], 0
        group.append(page)
        entries += page[2]
    if group:
        groups.append(group)
    return groups


def _escape(prefix: str) -> str:
    """A literal key prefix as a SCAN pattern: the hash tag's braces are fine, these are not."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
