"""What webhook delivery keeps in Redis: per endpoint and audit stream, a lease (who delivers
that stream) and the batches parked after their retries ran out.

An endpoint reads the trail through its consumer group, ``webhook.<endpoint>`` (feeds.py). The
process holding a stream's lease (lua/webhook_lease.lua) is the only one delivering that
stream, so its events go out in stream order, a batch at a time; a dead holder's lease runs
out and another process takes the stream over, with what the dead one was handed and never
acknowledged. Both keys live in the stream's own slot. ``status`` reads what an endpoint has
not taken, for GET /v1/webhooks, ``coupon-pool webhooks status`` and the webhook gauges.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..results import WebhookEndpoint
from ..settings import Hook
from ..webhooks import shown_url
from .context import Context
from .feeds import Event, Feeds, checked
from .functions import WEBHOOK_LEASE
from .keys import Keys

KIND = "webhook"  # the groups' kind in the registry ({ns}:feeds)
# An endpoint's counters ({ns}:hook:counts:<endpoint>), added to by every delivering process.
COUNTS = ("batches_delivered", "events_delivered", "events_skipped", "failures", "retries", "batches_parked")


def group_of(endpoint: str) -> str:
    return f"webhook.{endpoint}"


@dataclass(frozen=True)
class Parked:
    """A batch an endpoint did not take before its retries ran out, as stored (``raw``)."""

    stream: int
    raw: str
    parked_at_ms: int
    reason: str
    events: list[dict[str, Any]]


class Deliveries:
    """One endpoint's leases and parked batches, on every slot of the pool."""

    def __init__(self, ctx: Context, endpoint: str) -> None:
        self.ctx = ctx
        self.redis = ctx.redis
        self.endpoint = checked(endpoint, "endpoint")
        self.group = group_of(endpoint)
        self.slots: list[Keys] = ctx.layout.slots

    async def hold(self, stream: int, owner: str, lease_ms: int) -> bool:
        """Take ``stream``'s lease, or renew it: True while ``owner`` holds it."""
        return await self._lease("hold", stream, owner, lease_ms)

    async def release(self, stream: int, owner: str) -> bool:
        """Give the lease up (if ``owner`` holds it), so another process takes over at once."""
        return await self._lease("release", stream, owner, 0)

    async def _lease(self, action: str, stream: int, owner: str, lease_ms: int) -> bool:
        lease = self.slots[stream].webhook_lease(self.endpoint)
        keys, args = WEBHOOK_LEASE.bind(lease=lease, action=action, owner=owner, lease_ms=lease_ms)
        return bool(await self.ctx.library.run(WEBHOOK_LEASE, keys, args))

    async def pending(self, stream: int) -> int:
        """Entries of ``stream`` handed to the group's consumers and not acknowledged."""
        summary: Any = await self.redis.xpending(self.slots[stream].audit, self.group)
        return int(summary["pending"])

    async def park(self, stream: int, events: list[Event], reason: str, now_ms: int, bound: int) -> int:
        """Store a batch its retries gave up on; returns the oldest parked batches dropped to stay
        within ``bound`` (0 unless the list was full)."""
        key = self.slots[stream].webhook_parked(self.endpoint)
        record = {"stream": stream, "parked_at_ms": now_ms, "reason": reason}
        record["events"] = [e.body for e in events]
        length = int(await self.redis.rpush(key, orjson.dumps(record)))
        if length <= bound:
            return 0
        await self.redis.ltrim(key, -bound, -1)
        return length - bound

    async def parked(self, stream: int, start: int, count: int) -> list[Parked]:
        """Up to ``count`` parked batches of ``stream`` from the ``start``-th, oldest first."""
        key = self.slots[stream].webhook_parked(self.endpoint)
        raws: Any = await self.redis.lrange(key, start, start + count - 1)
        found = []
        for raw in raws:
            record = orjson.loads(raw)
            found.append(Parked(stream, raw, record["parked_at_ms"], record["reason"], record["events"]))
        return found

    async def unpark(self, batch: Parked) -> bool:
        """Remove a parked batch once delivered; False if it was gone already."""
        key = self.slots[batch.stream].webhook_parked(self.endpoint)
        return bool(await self.redis.lrem(key, 1, batch.raw))

    async def parked_counts(self) -> list[int]:
        """Parked batches per stream."""
        return [int(await self.redis.llen(k.webhook_parked(self.endpoint))) for k in self.slots]

    async def count(self, **added: int) -> None:
        """Add to the endpoint's counters (names of COUNTS), in one round trip."""
        key = self.slots[0].webhook_counts(self.endpoint)
        async with self.redis.pipeline(transaction=False) as pipe:
            for field, n in added.items():
                pipe.hincrby(key, field, n)
            await pipe.execute()

    async def counts(self) -> dict[str, int]:
        """The endpoint's counters, every one of COUNTS (0 until first added to)."""
        found: Any = await self.redis.hgetall(self.slots[0].webhook_counts(self.endpoint))
        values = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in found.items()}
        return {name: values.get(name, 0) for name in COUNTS}

    async def status(self, feeds: Feeds, url: str) -> WebhookEndpoint:
        """Its parked batches and what its group has not acknowledged; ``url`` (WEBHOOK_URL) is
        shown without what may be a credential."""
        # A few commands per audit stream (LLEN; XINFO GROUPS, then XPENDING or XRANGE): bounded
        # by the pool's streams, POOL_SHARDS + 1, which the settings fix. No caller input
        # reaches it, so GET /v1/webhooks costs the same whoever asks.
        parked = await self.parked_counts()
        counts = await self.counts()
        backlog = await feeds.backlog(self.group)
        oldest = [b.oldest_ms for b in backlog if b.oldest_ms is not None]
        lags = [b.lag for b in backlog]
        return WebhookEndpoint(
            endpoint=self.endpoint,
            url=shown_url(url),
            group=self.group,
            parked=sum(parked),
            parked_by_stream=parked,
            pending=sum(b.pending for b in backlog),
            undelivered=None if None in lags else sum(b.lag or 0 for b in backlog),
            oldest_undelivered_age_s=round(max(0.0, time.time() - min(oldest) / 1000), 3) if oldest else 0.0,
            **counts,
        )


async def webhook_status(ctx: Context, feeds: Feeds, hooks: Sequence[Hook]) -> list[WebhookEndpoint]:
    """Each endpoint's status, in the settings' order (``Deliveries.status``)."""
    return [await Deliveries(ctx, hook.name).status(feeds, hook.url) for hook in hooks]
