"""Where a call goes: the shard an allocation tries first, the slots a coupon may be in, and
the refusal of a pool laid out in another number of shards."""

from __future__ import annotations

import math
import random
import time
import zlib

from redis.crc import key_slot

from ..models import CouponType
from .context import Context
from .keys import Keys


class LayoutMismatch(RuntimeError):
    """POOL_SHARDS differs from the shard count of the pool's data."""


class Placement:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.layout = ctx.layout
        self._by_master: list[list[int]] = []
        self._by_master_at = -math.inf

    def walk(self, key_record: str | None) -> list[Keys]:
        """The shards an allocation tries, in order. The first is picked at random (a master
        at random, then one of its shards); with an Idempotency-Key (``key_record``) the
        order follows from the key, so a retry walks the same shards and meets each one's
        recorded answer."""
        shards = self.layout.shards
        first = zlib.crc32(key_record.encode()) % len(shards) if key_record else self._first_shard()
        return [shards[(first + n) % len(shards)] for n in range(len(shards))]

    def _first_shard(self) -> int:
        """A shard at random, each master's shards taking an equal share together: with 16
        shards over 3 masters (5, 5 and 6 of them) each master still serves a third."""
        count = len(self.layout.shards)
        if count == 1:
            return 0
        cluster = self.ctx.cluster
        if cluster is None:
            return random.randrange(count)
        now = time.monotonic()
        if now - self._by_master_at > 1.0:  # the slot map changes on failover and resharding
            groups: dict[str, list[int]] = {}
            try:
                for i, k in enumerate(self.layout.shards):
                    node = cluster.nodes_manager.get_node_from_slot(key_slot(k.stats.encode()))
                    groups.setdefault(node.name, []).append(i)
            except Exception:  # no slot map yet: spread over shards
                groups = {"": list(range(count))}
            self._by_master, self._by_master_at = list(groups.values()), now
        return random.choice(random.choice(self._by_master))

    def slots_of(self, code: str, coupon_type: CouponType | None) -> list[Keys]:
        """Where coupon ``code`` may be: its slot, or without a type its shard, then the main slot."""
        if coupon_type is not None:
            return [self.layout.of(code, coupon_type)]
        home = self.layout.home(code)
        return [home] if home is self.layout.main else [home, self.layout.main]

    async def check_layout(self) -> None:
        """Refuse (LayoutMismatch) a pool whose data is laid out in another number of shards.

        A sharded pool records its shard count in the main slot on first use; a pool of
        one shard records nothing (its keys are the same as before sharding existed).
        """
        redis, k = self.ctx.redis, self.layout.main
        shards = len(self.layout.shards)
        recorded = await redis.get(k.shard_count)
        if recorded is None and shards > 1:
            if await redis.exists(k.available(CouponType.FREE), k.available(CouponType.STANDARD)):
                recorded = "1"  # FREE or STANDARD coupons in the main slot: a pool of one shard
            elif await redis.set(k.shard_count, shards, nx=True):
                return
            else:
                recorded = await redis.get(k.shard_count)
        if recorded is not None and int(recorded) != shards:
            raise LayoutMismatch(
                f"the pool {k.namespace!r} holds data in {int(recorded)} shard(s), and POOL_SHARDS "
                f"is {shards}: set POOL_SHARDS={int(recorded)} (the shard count is fixed once a pool "
                f"has data)"
            )
