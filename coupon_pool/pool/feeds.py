"""The audit trail as a feed: consumer groups over every audit stream of the pool.

A pool has one audit stream per slot (``layout.slots``, main first: one on one Redis,
POOL_SHARDS + 1 when sharded), each in a cluster slot of its own. A group is created under
one name on every stream and registered in the main slot (``{ns}:feeds``: name -> kind).
Its consumers read stream by stream (a command never spans two slots), acknowledge what they
have handled, and take over what another consumer was handed and never acknowledged
(XAUTOCLAIM). An event is an audit entry as ``GET /v1/audit`` gives it; its ``id`` names the
stream and the entry, so it is unique in the pool and stable: a consumer deduplicates on it.

While a group is registered, the writes trim each stream only at a guard (context.AuditCap)
and ``trim`` keeps it to what the groups still need, up to FEED_MAX_LEN entries (lua/feed_trim.lua);
what it drops beyond that is counted per slot (``{ns}:audit:dropped``), never silently.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, cast

from redis.exceptions import ResponseError

from .codec import audit_json
from .context import Context
from .functions import FEED_TRIM
from .keys import Keys

GROUP_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"  # a group's name, and a consumer's
_NAME = re.compile(GROUP_PATTERN)
Start = Literal["start", "now"]


class FeedError(Exception):
    """A group that does not exist, or a name out of its charset."""


class Event(NamedTuple):  # not a frozen dataclass: one is made per event delivered, at a third of the cost
    stream: int  # the stream's index in layout.slots
    entry: str  # the stream's own id, "<ms>-<seq>"
    id: str  # the event's id in the pool (as GET /v1/audit gives it)
    body: dict[str, Any]  # the event as JSON: id, time, op, then the entry's fields


@dataclass(frozen=True)
class Backlog:
    """One stream's share of what a group has not acknowledged."""

    stream: int
    pending: int  # delivered to a consumer, not acknowledged
    lag: int | None  # not yet delivered (None: Redis cannot tell, after a trim past the group)
    oldest_ms: int | None  # the oldest entry not acknowledged (pending or not yet delivered)


@dataclass(frozen=True)
class FeedStatus:
    """For the metrics: per group, entries pending and the oldest unacknowledged one's age;
    and the entries dropped past FEED_MAX_LEN, ever."""

    groups: dict[str, tuple[int, float]]  # name -> (pending, oldest age in s)
    dropped: int


@dataclass(frozen=True)
class Trimmed:
    """What one trim of one stream removed (feed_trim.lua)."""

    stream: int
    removed: int  # entries no group needed
    dropped: int  # entries dropped past FEED_MAX_LEN though a group needed them
    lost_by: list[str]  # the groups that lost entries so


def checked(name: str, what: str = "group") -> str:
    if not _NAME.match(name):
        raise FeedError(f"a {what} name is 1-64 of A-Z a-z 0-9 _ . -, not {name!r}")
    return name


class Feeds:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.redis = ctx.redis
        self.layout = ctx.layout
        self.slots: list[Keys] = ctx.layout.slots

    @property
    def streams(self) -> int:
        return len(self.slots)

    def event(self, stream: int, entry: str, fields: dict[str, str]) -> Event:
        event_id = f"{entry}-{stream}" if self.layout.sharded else entry
        return Event(stream, entry, event_id, audit_json(event_id, fields, entry))

    async def create(self, name: str, start: Start, kind: str) -> bool:
        """Group ``name`` on every stream (an existing one is kept, its position too), read from
        the oldest entry kept (``start``) or from the next one written (``now``); True if it
        was new on some stream. It is registered first, so the trimmer keeps entries for it
        from the moment it exists."""
        checked(name)
        await self.redis.hset(self.layout.main.feeds, name, kind)
        self.ctx.audit_cap.read_by_groups(True)
        created = False
        for k in self.slots:
            try:
                await self.redis.xgroup_create(k.audit, name, "0" if start == "start" else "$", mkstream=True)
                created = True
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        return created

    async def drop(self, name: str) -> bool:
        """Group ``name`` gone from every stream and the registry: it holds back no entry more."""
        checked(name)
        existed = bool(await self.redis.hdel(self.layout.main.feeds, name))
        for k in self.slots:
            if await self.redis.exists(k.audit):
                existed = bool(await self.redis.xgroup_destroy(k.audit, name)) or existed
        if not await self.registered():
            self.ctx.audit_cap.read_by_groups(False)
        return existed

    async def registered(self) -> dict[str, str]:
        """The groups: name -> kind ("events" for `coupon-pool events`, "webhook" ...)."""
        return cast(dict[str, str], await self.redis.hgetall(self.layout.main.feeds))

    async def refresh(self) -> dict[str, str]:
        """The groups, with the writes' audit cap set for them (context.AuditCap)."""
        groups = await self.registered()
        self.ctx.audit_cap.read_by_groups(bool(groups))
        return groups

    async def read(self, name: str, consumer: str, stream: int, count: int) -> list[Event]:
        """Up to ``count`` entries of ``stream`` not yet delivered to the group, in stream order;
        they become ``consumer``'s pending ones until acknowledged."""
        return await self._read_group(name, consumer, stream, count, ">")

    async def own_pending(self, name: str, consumer: str, stream: int, count: int) -> list[Event]:
        """Up to ``count`` of ``consumer``'s own pending entries of ``stream``, oldest first
        (what it was handed before it stopped). Entries trimmed meanwhile are acknowledged."""
        return await self._read_group(name, consumer, stream, count, "0")

    async def _read_group(self, name: str, consumer: str, stream: int, count: int, at: str) -> list[Event]:
        key = self.slots[stream].audit
        consumer = checked(consumer, "consumer")
        try:
            reply: Any = await self.redis.xreadgroup(name, consumer, {key: at}, count=count)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                missing = f"there is no group {name!r} on the trail (coupon-pool events creates one)"
                raise FeedError(missing) from None
            raise
        entries = reply[0][1] if reply else []
        gone = [entry for entry, fields in entries if fields is None]
        if gone:
            await self.redis.xack(key, name, *gone)
        return [self.event(stream, entry, fields) for entry, fields in entries if fields is not None]

    async def claim(
        self, name: str, consumer: str, stream: int, count: int, min_idle_ms: int = 0
    ) -> list[Event]:
        """Up to ``count`` pending entries of ``stream`` (any consumer's, idle ``min_idle_ms``
        at least) made ``consumer``'s, oldest first; those trimmed meanwhile leave the
        pending list (the trimmer counted them)."""
        key = self.slots[stream].audit
        reply: Any = await self.redis.xautoclaim(
            key, name, checked(consumer, "consumer"), min_idle_ms, "0-0", count=count
        )
        return [self.event(stream, entry, fields) for entry, fields in reply[1] if fields is not None]

    async def ack(self, name: str, stream: int, entries: list[str]) -> int:
        if not entries:
            return 0
        acked: int = await self.redis.xack(self.slots[stream].audit, name, *entries)
        return acked

    async def backlog(self, name: str) -> list[Backlog]:
        """Per stream, what group ``name`` has not acknowledged, and the oldest of it."""
        found = []
        for n, k in enumerate(self.slots):
            groups = await self.redis.xinfo_groups(k.audit) if await self.redis.exists(k.audit) else []
            group = next((g for g in groups if g["name"] == name), None)
            if group is None:
                continue
            pending, lag = int(group["pending"]), group.get("lag")
            oldest: Any = None
            if pending:
                summary: Any = await self.redis.xpending(k.audit, name)
                oldest = summary["min"]
            elif lag is None or int(lag) > 0:
                following = await self.redis.xrange(k.audit, min=f"({group['last-delivered-id']}", count=1)
                oldest = following[0][0] if following else None
            oldest_ms = int(oldest.partition("-")[0]) if oldest else None
            found.append(Backlog(n, pending, None if lag is None else int(lag), oldest_ms))
        return found

    async def trim(self) -> list[Trimmed]:
        """Trim every stream to what the groups need (feed_trim.lua): one call per stream."""
        done = []
        for n, k in enumerate(self.slots):
            keys, args = FEED_TRIM.bind(
                stream=k.audit,
                dropped=k.audit_dropped,
                keep=self.ctx.options.audit_max_len,
                bound=self.ctx.options.feed_max_len,
            )
            reply = await self.ctx.library.run(FEED_TRIM, keys, args)
            done.append(Trimmed(n, int(reply[0]), int(reply[1]), list(reply[3:])))
        return done

    async def status(self) -> FeedStatus:
        """Every group's backlog (a few calls per stream and group) and the drops."""
        groups = {}
        now_ms = time.time() * 1000
        for name in sorted(await self.registered()):
            backlog = await self.backlog(name)
            oldest = [b.oldest_ms for b in backlog if b.oldest_ms is not None]
            age = max(0.0, (now_ms - min(oldest)) / 1000) if oldest else 0.0
            groups[name] = (sum(b.pending for b in backlog), age)
        return FeedStatus(groups, await self.dropped())

    async def dropped(self) -> int:
        """Entries dropped past FEED_MAX_LEN though a group needed them, over every slot, ever."""
        counts = [await self.redis.get(k.audit_dropped) for k in self.slots]
        return sum(int(c or 0) for c in counts)
