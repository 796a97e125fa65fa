"""Keeping the pool in shape: the purge of expired coupons, and what Redis's memory allows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import RedisCluster

from ..models import CouponType
from ..results import PurgeResult
from .codec import pairs
from .context import TYPES, Context
from .functions import PURGE, SETTLE
from .keys import Keys

SETTLE_BATCH = 500  # timers one settle.lua call carries out


@dataclass(frozen=True)
class Memory:
    used: int
    max: int  # 0: no limit


class Upkeep:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def settle(self, batch: int = SETTLE_BATCH) -> int:
        """Carry out the due holds and starts of every slot (settle.lua), up to ``batch`` of each
        type per call, until none is due. Returns how many it carried out."""
        done = 0
        for k in self.ctx.layout.slots:
            keys, args = SETTLE.bind(
                dues=[k.due(t) for t in CouponType], slot=k.slot, budget=batch,
                audit_cap=self.ctx.audit_cap.value, types=TYPES,
            )  # fmt: skip
            while True:
                settled, more = await self.ctx.library.run(SETTLE, keys, args)
                done += int(settled)
                if not int(more):
                    break
        return done

    async def purge(self) -> PurgeResult:
        """Remove expired coupons, slot by slot, a bounded batch per function call, until none is
        left; the due holds and starts are settled first (purge.lua takes only coupons none of
        whose holds is left to settle)."""
        await self.settle()
        purged = dict.fromkeys(CouponType, 0)
        retired = dict.fromkeys(CouponType, 0)
        for k in self.ctx.layout.slots:
            keys, args = PURGE.bind(
                stats=k.stats,
                audit_stream=k.audit,
                exhausted=k.exhausted,
                prefix=k.coupon_prefix,
                limit=self.ctx.options.purge_batch_size,
                audit_cap=self.ctx.audit_cap.value,
                tracked_prefix=k.tracked_prefix,
                available_prefix=k.available_prefix,
                draining_prefix=k.draining_prefix,
                due_prefix=k.due_prefix,
                types=TYPES,
            )
            while True:
                reply = pairs(await self.ctx.library.run(PURGE, keys, args))
                for t in CouponType:
                    purged[t] += int(reply[f"purged:{t.value}"])
                    retired[t] += int(reply[f"retired:{t.value}"])
                if not int(reply["more"]):
                    break
        return PurgeResult.model_construct(purged=purged, retired=retired)

    async def try_purge_lock(self, seconds: float, owner: str) -> bool:
        """Claim the purge for the next ``seconds`` as ``owner``: True for one caller across all
        processes. A lease: its holder renews it at its next turn, and another owner takes it
        only once it has lapsed (its holder stopped purging)."""
        lock, ms = self.ctx.keys.purge_lock, max(1, int(seconds * 1000))
        holder = await self.ctx.redis.set(lock, owner, nx=True, px=ms, get=True)
        if holder is None:  # it was free: taken
            return True
        if holder != owner:
            return False
        # Our own, from our last turn: one interval on, it may stand a little longer yet (Redis
        # keeps a key through its last millisecond; two hosts' clocks drift apart). Renewed.
        await self.ctx.redis.set(lock, owner, px=ms)
        return True

    async def memory(self) -> Memory:
        """What Redis uses, and its maxmemory (0: no limit); in a cluster, its fullest master's."""
        cluster = self.ctx.cluster
        if cluster is None:
            return _memory(await self.ctx.redis.info("memory"))
        found = await cluster.info("memory", target_nodes=RedisCluster.PRIMARIES)
        return max((_memory(info) for info in found.values()), key=lambda m: (m.used / m.max) if m.max else 0)

    async def memory_of(self, k: Keys) -> Memory:
        """The memory of the node that holds slot ``k``."""
        cluster = self.ctx.cluster
        if cluster is None:
            return await self.memory()
        await cluster.initialize()  # the slot map, if no call has loaded it yet
        node = cluster.get_node_from_key(k.stats)
        return _memory(await cluster.info("memory", target_nodes=node))

    def uploads_stop_at(self, memory: Memory) -> int | None:
        """The bytes of Redis memory from which uploads are refused; None without a limit."""
        return int(memory.max * self.ctx.options.upload_memory_share) if memory.max else None


def _memory(info: dict[str, Any]) -> Memory:
    return Memory(used=int(info["used_memory"]), max=int(info["maxmemory"]))
