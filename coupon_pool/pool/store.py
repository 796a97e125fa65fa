"""The store: the pool's one facade over its rooms, each a module of its own job.

    coupons.py    allocate, redeem, roll back, release    placement.py  shards and slots
    uploading.py  uploads, resumable                      upkeep.py     purge, memory
    reads.py      listings, a coupon, stats, audit        keyed.py      Idempotency-Key
    feeds.py      the audit trail's consumer groups       levels.py     pool-low events
    batches.py    batches: rules, disable, jobs           generation.py codes the service draws (a job)
    exporting.py  a batch's coupons, by stretches

All coupon state lives in Redis; every change is one atomic function call (functions.py,
library.py); replies are decoded in codec.py.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from ..settings import Settings
from .batches import Batches
from .budgets import FailedLookups
from .connection import connect
from .context import Context, Options
from .coupons import Coupons
from .exporting import Exporting
from .feeds import Feeds
from .generation import Generating
from .keyed import Keyed
from .keys import Keys, Layout
from .levels import Levels
from .library import Library
from .placement import Placement
from .reads import Reads
from .upkeep import Upkeep
from .uploading import Uploading


class Store:
    """The pool's operations, on ``redis``, for the pool whose main slot is ``keys``."""

    def __init__(self, redis: Redis, keys: Keys, library: Library | None = None, **options: Any) -> None:
        """``library``: the process's (shared with the MEGADEAL gate); else one of its own.
        ``options``: those of context.Options."""
        self.options = Options(**options)
        self.redis = redis
        self.keys = keys
        self.layout = Layout(keys.namespace, self.options.shards)
        self.library = library or library_for(redis, self.options)
        ctx = self.ctx = Context(redis, self.library, self.layout, self.options)
        self.placement = Placement(ctx)
        self.keyed = Keyed(redis, self.layout)  # await store.keyed(idem, store.allocate(...))
        upkeep = self.upkeep = Upkeep(ctx)
        self.batches = Batches(ctx, self.placement)
        coupons, reads, uploading = (
            Coupons(ctx, self.placement),
            Reads(ctx, self.placement),
            Uploading(ctx, upkeep, self.batches),
        )
        self.allocate, self.redeem, self.rollback, self.release, self.validate = (
            coupons.allocate, coupons.redeem, coupons.rollback, coupons.release, coupons.validate,
        )  # fmt: skip
        self.user_coupons, self.get_coupon, self.stats, self.audit = (
            reads.user_coupons, reads.get_coupon, reads.stats, reads.audit,
        )  # fmt: skip
        self.purge, self.settle, self.try_purge_lock, self.memory, self.uploads_stop_at = (
            upkeep.purge, upkeep.settle, upkeep.try_purge_lock, upkeep.memory, upkeep.uploads_stop_at,
        )  # fmt: skip
        self.upload = uploading.upload
        self.generate = Generating(ctx, uploading, self.batches).generate  # and the batches' "generate" jobs
        self.export = Exporting(ctx).export
        self.failed_lookups = FailedLookups(ctx)
        self.feeds = Feeds(ctx)  # the audit trail's consumer groups, and its trimming for them
        self.levels = Levels(ctx, reads.stats)  # pool-low events: check(thresholds), levels(), low()
        self.check_layout = self.placement.check_layout

    @classmethod
    def from_settings(
        cls, settings: Settings, max_connections: int | None = None, library: Library | None = None
    ) -> Store:
        """The store of ``settings``' pool, on a client of its own (``max_connections``)."""
        redis = connect(settings, max_connections or settings.redis_max_connections, settings.redis_timeout_s)
        return cls(redis, Keys(settings.key_namespace), library, **options_of(settings))

    async def prepare(self) -> None:
        """Load the function library into Redis (every master of a cluster) now, so the first
        requests need no reload; and refuse a pool laid out in another number of shards (its
        coupons would be looked for in the wrong ones)."""
        await self.library.load()
        await self.check_layout()
        await self.feeds.refresh()  # with consumer groups, the writes trim only at the guard

    async def aclose(self) -> None:
        await self.redis.aclose()


def options_of(settings: Settings) -> dict[str, Any]:
    """The store's options from the settings (context.Options)."""
    return {
        "shards": settings.pool_shards,
        "wait_replicas": settings.redis_wait_replicas,
        "wait_timeout_ms": settings.redis_wait_timeout_ms,
        "retry_for_s": settings.redis_timeout_s,
        "upload_chunk_size": settings.upload_chunk_size,
        "upload_memory_share": settings.upload_memory_share,
        "purge_batch_size": settings.purge_batch_size,
        "audit_max_len": settings.audit_max_len,
        "feed_max_len": settings.feed_max_len,
        "max_allocations_per_user": settings.max_allocations_per_user,
        "failed_lookups_per_s": settings.failed_lookups_per_s,
        "failed_lookup_burst": settings.failed_lookup_burst,
    }


def library_for(redis: Redis, options: Options) -> Library:
    """A library client with the options' replication wait and retry time."""
    return Library(
        redis,
        wait_replicas=options.wait_replicas,
        wait_timeout_ms=options.wait_timeout_ms,
        retry_for_s=options.retry_for_s,
    )
