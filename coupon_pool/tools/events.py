"""``coupon-pool events --group NAME``: the audit trail as JSON Lines, through a consumer group.

The group (feeds.py) is made on every audit stream of the pool the first time a name is used,
read from the oldest entry kept (``--from start``) or from the next one written (``--from
now``, the default). Each event is written to stdout, and acknowledged once written and
flushed: a run killed in between writes those again when it starts again (at least once; an
event's ``id`` is what to deduplicate on). A run first writes what this consumer was handed
and never acknowledged, then what other consumers of the group were handed and left idle for
``--claim-idle-s``, then what is new; it ends when nothing is left, or with ``--follow``
waits for more (until interrupted).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from typing import BinaryIO

import orjson
from redis.exceptions import RedisError

from ..pool.feeds import GROUP_PATTERN, Event, FeedError, Feeds
from ..pool.placement import LayoutMismatch
from ..pool.store import Store
from ..settings import Settings
from .common import operator_settings

DONE, FAILED, USAGE, NO_GROUP = 0, 1, 2, 3  # exit codes, as README lists them
POLL_S = 0.1  # with --follow, the pause when every stream had nothing new
MAX_COUNT = 1000
_KIND = "events"


def _name(text: str) -> str:
    if not re.fullmatch(GROUP_PATTERN, text):
        raise argparse.ArgumentTypeError("a name is 1-64 characters of A-Z a-z 0-9 _ . -")
    return text


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be 1-{MAX_COUNT}")
    return int(text)


def _idle(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86_400:
        raise argparse.ArgumentTypeError("must be 0 to 86400 seconds")
    return value


class Output:
    """Events written as JSON Lines, then acknowledged, a stream's share at a time."""

    def __init__(self, feeds: Feeds, group: str, out: BinaryIO) -> None:
        self.feeds, self.group, self.out = feeds, group, out
        self.written = 0

    async def write(self, events: list[Event]) -> None:
        if not events:
            return
        events.sort(key=lambda e: (*_order(e.entry), e.stream))
        self.out.write(b"".join(orjson.dumps(e.body) + b"\n" for e in events))
        self.out.flush()  # written (a broken pipe raises here, before any acknowledgement)
        self.written += len(events)
        for n in sorted({e.stream for e in events}):
            await self.feeds.ack(self.group, n, [e.entry for e in events if e.stream == n])


def _order(entry: str) -> tuple[int, int]:
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq)


async def run(store: Store, args: argparse.Namespace, out: BinaryIO) -> int:
    feeds = store.feeds
    if args.drop:
        if not await feeds.drop(args.group):
            print(f"coupon-pool events: there is no group {args.group!r}", file=sys.stderr)
            return NO_GROUP
        print(f"coupon-pool events: group {args.group!r} dropped", file=sys.stderr)
        return DONE
    if not await feeds.create(args.group, args.start or "now", _KIND) and args.start:
        print(
            f"coupon-pool events: group {args.group!r} exists: it goes on from where it was "
            "(--from applies to a new group)",
            file=sys.stderr,
        )
    output = Output(feeds, args.group, out)
    streams = range(feeds.streams)

    async def until_empty(take: Callable[[int], Awaitable[list[Event]]]) -> None:
        for n in streams:
            while events := await take(n):
                await output.write(events)

    await until_empty(lambda n: feeds.own_pending(args.group, args.consumer, n, args.count))
    idle_ms = round(args.claim_idle_s * 1000)
    await until_empty(lambda n: feeds.claim(args.group, args.consumer, n, args.count, idle_ms))
    while True:
        events = [e for n in streams for e in await feeds.read(args.group, args.consumer, n, args.count)]
        await output.write(events)
        if not events:
            if not args.follow:
                return DONE
            await asyncio.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="coupon-pool events",
        description="Write the audit trail of REDIS_URL's pool as JSON Lines through consumer group "
        "GROUP, acknowledging each event once written. Exit 0 when done, 1 when Redis failed, 2 on "
        "bad options or settings, 3 when --drop names no group.",
    )
    parser.add_argument("--group", type=_name, required=True, help="the consumer group, 1-64 of A-Za-z0-9_.-")
    parser.add_argument(
        "--from",
        dest="start",
        choices=["start", "now"],
        help="a new group reads from the oldest entry kept (start) or the next one written (now, "
        "the default); an existing group goes on from where it was",
    )
    parser.add_argument("--follow", action="store_true", help="wait for new events until interrupted")
    parser.add_argument(
        "--consumer", type=_name, default="events", help="this reader's name in the group (default events)"
    )
    parser.add_argument("--count", type=_count, default=100, help=f"events read per call, 1-{MAX_COUNT}")
    parser.add_argument(
        "--claim-idle-s",
        type=_idle,
        default=60.0,
        help="take over other consumers' events left unacknowledged this long (0-86400, default 60)",
    )
    parser.add_argument("--drop", action="store_true", help="delete the group: it holds back no entry more")
    args = parser.parse_args(argv)
    settings = operator_settings("coupon-pool events")
    if settings is None:
        return USAGE
    try:
        return asyncio.run(_main(settings, args))
    except KeyboardInterrupt:
        return 130  # what was written and not acknowledged is written again next time
    except BrokenPipeError:
        return DONE  # the reader went away: what it did not get stays unacknowledged
    except (RedisError, FeedError, LayoutMismatch) as exc:
        print(f"coupon-pool events: {exc}", file=sys.stderr)
        return FAILED


async def _main(settings: Settings, args: argparse.Namespace) -> int:
    store = Store.from_settings(settings, max_connections=4)
    try:
        await store.prepare()
        return await run(store, args, sys.stdout.buffer)
    finally:
        await store.aclose()
