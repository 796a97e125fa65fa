"""What every room of the store works with: the Redis client, the function library, where
the pool's data lives, and the pool's options."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis, RedisCluster

from ..models import CouponType
from .keys import Keys, Layout
from .library import Library

TYPES = [t.value for t in CouponType]


@dataclass(frozen=True, kw_only=True)
class Options:
    """The pool's settings that the store applies (each one a setting of settings.py)."""

    shards: int = 1  # POOL_SHARDS
    upload_chunk_size: int = 100
    upload_memory_share: float = 0.9
    purge_batch_size: int = 1000
    audit_max_len: int = 100_000
    feed_max_len: int = 1_000_000  # FEED_MAX_LEN: entries per audit stream while groups read it
    max_allocations_per_user: int = 0
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000
    retry_for_s: float = 2.0
    failed_lookups_per_s: float = 10.0
    failed_lookup_burst: int = 100


class AuditCap:
    """The length each audit stream is trimmed to by the writes themselves (XADD MAXLEN ~):
    AUDIT_MAX_LEN while no consumer group reads the trail; while one does, twice FEED_MAX_LEN,
    a guard only, since the feeds' trimmer (feeds.py) keeps each stream to what the groups
    still need, within FEED_MAX_LEN, and counts what it drops. ``value`` is what a call passes."""

    def __init__(self, plain: int, feed_max_len: int) -> None:
        self.plain, self.guard = plain, 2 * max(feed_max_len, plain)
        self.grouped = False
        self.value = plain

    def read_by_groups(self, grouped: bool) -> None:
        self.grouped = grouped
        self.value = self.guard if grouped else self.plain


@dataclass(frozen=True)
class Context:
    redis: Redis
    library: Library
    layout: Layout
    options: Options
    cluster: RedisCluster | None = field(init=False)
    audit_cap: AuditCap = field(init=False)

    def __post_init__(self) -> None:
        cluster = self.redis if isinstance(self.redis, RedisCluster) else None
        object.__setattr__(self, "cluster", cluster)
        object.__setattr__(self, "audit_cap", AuditCap(self.options.audit_max_len, self.options.feed_max_len))

    @property
    def keys(self) -> Keys:
        """The main slot's keys."""
        return self.layout.main
