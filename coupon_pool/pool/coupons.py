"""One coupon's life: allocate a usage to a user, redeem it, roll the redemption back, or
release the allocation. Each is one function call in the slot that holds the coupon."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..models import CouponType
from ..results import Allocation, Redemption, Release, Rollback, Validation
from . import keyed
from .codec import (
    ALLOCATE_DETAIL,
    USE_DETAIL,
    Allocated,
    Changed,
    Redeemed,
    allocation,
    from_ms,
    raise_if_error,
    validation,
)
from .connection import NotSent
from .context import Context
from .functions import ALLOCATE, BATCH_RESERVE, REDEEM, RELEASE, ROLLBACK, VALIDATE, Function
from .keys import Keys
from .placement import Placement
from .protocol import NOT_RUN

NO_HOLD = b"0"  # hold_ms of an allocation for good
IN_MAIN = b"="  # `capping` in the main slot: a capped batch's count is taken there (redeem.lua)
RETRIES = 100_000  # allocation calls that set disabled coupons aside (64 each), at most


class _SlotArgs:
    """A slot's constant arguments, encoded once (redis-py passes bytes as is)."""

    def __init__(self, k: Keys) -> None:
        self.available = {t: k.available(t).encode() for t in CouponType}
        self.exhausted = k.exhausted.encode()
        self.stats = k.stats.encode()
        self.audit = k.audit.encode()
        self.coupon_prefix = k.coupon_prefix.encode()
        self.held_prefixes = {t: k.held_type_prefix(t).encode() for t in CouponType}
        self.tracked_prefix = k.tracked_prefix.encode()
        self.draining = {t: k.draining(t).encode() for t in CouponType}
        self.due = {t: k.due(t).encode() for t in CouponType}
        self.slot = k.slot.encode()


class Coupons:
    def __init__(self, ctx: Context, placement: Placement) -> None:
        self.ctx = ctx
        self.run = ctx.library.run
        self.placement = placement
        self._slot = {k.tag: _SlotArgs(k) for k in ctx.layout.slots}
        options = ctx.options
        self._max_per_user = str(options.max_allocations_per_user).encode()
        self._type_names = {t: t.value.encode() for t in CouponType}
        self._prepare(ctx.audit_cap.value)
        self._capping = {k.tag: IN_MAIN if k is ctx.layout.main else b"" for k in ctx.layout.slots}

    def _prepare(self, audit_cap: int) -> None:
        """Bind each call's names that are the same for every call in a slot, once (again when
        the audit cap changes: feeds.py raises it while consumer groups read the trail)."""
        self._prepared_cap = audit_cap
        self._audit_cap = str(audit_cap).encode()
        self._allocate = {
            (k.tag, t): ALLOCATE.prepare(
                available=a.available[t], exhausted=a.exhausted, stats=a.stats, audit_stream=a.audit,
                draining=a.draining[t], prefix=a.coupon_prefix, ctype=self._type_names[t],
                audit_cap=self._audit_cap, max_per_user=self._max_per_user,
                held_prefix=a.held_prefixes[t], tracked_prefix=a.tracked_prefix, due=a.due[t], slot=a.slot,
            )
            for k in self.ctx.layout.slots
            for a in (self._slot[k.tag],)
            for t in CouponType
        }  # fmt: skip
        self._use_calls = {
            (k.tag, fn.name): fn.prepare(
                stats=a.stats, audit_stream=a.audit, audit_cap=self._audit_cap, slot=a.slot
            )
            for k in self.ctx.layout.slots
            for a in (self._slot[k.tag],)
            for fn in (REDEEM, ROLLBACK, RELEASE)
        }

    async def allocate(self, user_id: str, coupon_type: CouponType, hold_s: int | None = None) -> Allocation:
        """Reserve one usage of the first-expiring available coupon of a shard for ``user_id``;
        the shards are tried in turn (Placement.walk) before the answer is pool_empty. With
        ``hold_s``, the usage is held that long, not given for good (lib.lua, allocate_one).
        MEGADEAL coupons are allocated by the MEGADEAL gate (megadeal.py)."""
        if coupon_type is CouponType.MEGADEAL:
            raise ValueError(
                "MEGADEAL allocations go through MegadealGate.allocate, which applies the limits"
            )
        run = keyed.current()
        hold_ms = NO_HOLD if hold_s is None else hold_s * 1000
        shards = self.placement.walk(run.idem.record if run else None)
        unreachable: Exception | None = None
        for n, k in enumerate(shards):
            last = n == len(shards) - 1
            try:
                # Unkeyed, a shard that cannot run it now is passed over at once (the last is waited for).
                reply = await self._allocate_in(
                    k, user_id, coupon_type, hold_ms, None if run or last else 0.0
                )
            except (NotSent, *NOT_RUN) as exc:
                if run or last:  # a keyed call keeps its order: a retry walks it again
                    raise
                unreachable = exc  # its master is failing over, or its slot moving: try the next
                continue
            if reply[0] != "pool_empty":
                break
        if unreachable is not None and reply[0] == "pool_empty":
            raise unreachable  # some shard could not be asked: not known to be empty
        limit = self.ctx.options.max_allocations_per_user
        raise_if_error(reply, ALLOCATE_DETAIL, type=coupon_type.value, limit=limit)
        return allocation(Allocated._make(reply[1:]), user_id, coupon_type)

    async def _allocate_in(
        self, k: Keys, user_id: str, coupon_type: CouponType, hold_ms: Any, wait: float | None
    ) -> Any:
        if self.ctx.audit_cap.value != self._prepared_cap:
            self._prepare(self.ctx.audit_cap.value)
        keys, args = self._allocate[k.tag, coupon_type].bind(
            held=k.held(coupon_type, user_id),
            listing=k.user_coupons(coupon_type, user_id),
            user=user_id,
            hold_ms=hold_ms,
        )
        for _ in range(RETRIES):
            reply = await self.run(ALLOCATE, keys, args, retry_for_s=wait)
            if reply[0] != "retry":  # else it set disabled coupons aside: on with the search
                return reply
        raise RuntimeError("an allocation set disabled coupons aside 100,000 times over")

    async def redeem(self, code: str, user_id: str, coupon_type: CouponType | None) -> Redemption:
        """Record that ``user_id`` used the coupon ``code`` allocated to them. A coupon in a
        shard whose batch is capped takes one of the batch's count in the main slot first
        (batch_reserve.lua), given back if the redemption then fails."""
        redeemed = Redeemed._make((await self._use(REDEEM, code, user_id, coupon_type))[1:])
        return Redemption(
            code=code,
            type=CouponType(redeemed.type),
            user_id=user_id,
            redeemed_at=from_ms(redeemed.redeemed_ms),
            used=int(redeemed.used),
            max_usages=int(redeemed.max_usages),
        )

    async def rollback(self, code: str, user_id: str, coupon_type: CouponType | None) -> Rollback:
        """Undo the user's redemption of ``code``: the allocation is unredeemed again."""
        reply = await self._use(ROLLBACK, code, user_id, coupon_type)
        run = keyed.current()
        if len(reply) > 5 and not (run and run.replayed):  # a capped batch's count, kept in the main slot
            await self.reserve(reply[5], -1)
        undone = Changed._make(reply[1:5])
        return Rollback(
            code=code,
            type=CouponType(undone.type),
            user_id=user_id,
            rolled_back_at=from_ms(undone.at_ms),
            used=int(undone.total),
            max_usages=int(undone.max_usages),
        )

    async def release(self, code: str, user_id: str, coupon_type: CouponType | None) -> Release:
        """Give the user's unredeemed allocation of ``code`` back to the pool (a hold ends early)."""
        released = Changed._make((await self._use(RELEASE, code, user_id, coupon_type))[1:])
        return Release(
            code=code,
            type=CouponType(released.type),
            user_id=user_id,
            released_at=from_ms(released.at_ms),
            allocated=int(released.total),
            max_usages=int(released.max_usages),
        )

    async def validate(self, code: str, user_id: str, coupon_type: CouponType | None) -> Validation:
        """Whether ``user_id``'s redemption of ``code`` would succeed now, by redeem's own rules
        (lib.lua, redeemable); the coupon with it. Writes nothing."""
        expected = coupon_type.value if coupon_type else ""
        for k in self.placement.slots_of(code, coupon_type):
            keys, args = VALIDATE.bind(
                coupon=k.coupon(code),
                user=user_id,
                expected=expected,
                slot=k.slot,
                capping=self._capping[k.tag],
            )
            reply: list[Any] = await self.run(VALIDATE, keys, args)
            if reply[0] != "coupon_not_found":
                break
        if len(reply) > 8:  # a coupon in a shard, of a capped batch: its count is in the main slot
            record = self.ctx.layout.main.batch(reply[8])
            cap, redeemed = await self.ctx.redis.hmget(record, "max_redemptions", "redeemed")
            if cap is not None and int(redeemed or 0) >= int(cap):
                reply[0] = "batch_exhausted"
        return validation(reply[:8], code)

    async def reserve(self, batch: str, delta: int) -> list[Any]:
        """Take (1) or give back (-1) one of capped batch ``batch``'s redemptions, in the main slot."""
        keys, args = BATCH_RESERVE.bind(record=self.ctx.layout.main.batch(batch), delta=delta)
        reply: list[Any] = await self.run(BATCH_RESERVE, keys, args)
        return reply

    async def _use(self, fn: Function, code: str, user_id: str, coupon_type: CouponType | None) -> list[Any]:
        """Run redeem, rollback or release: same keys, same arguments."""
        ctype = self._type_names[coupon_type] if coupon_type else b""
        capped = fn is not RELEASE
        if self.ctx.audit_cap.value != self._prepared_cap:
            self._prepare(self.ctx.audit_cap.value)

        async def call(k: Keys) -> Any:
            prepared = self._use_calls[k.tag, fn.name]
            capping = {"capping": self._capping[k.tag]} if capped else {}
            keys, args = prepared.bind(
                coupon=k.coupon(code), user=user_id, expected=ctype, code=code, **capping
            )
            reply = await self.run(fn, keys, args)
            if reply[0] != "batch_capped":
                return reply
            # A shard's coupon of a capped batch: take one of the batch's count, then redeem.
            batch = reply[1]
            if (await self.reserve(batch, 1))[0] != "ok":
                return ["batch_exhausted"]
            keys, args = prepared.bind(
                coupon=k.coupon(code), user=user_id, expected=ctype, code=code, capping=batch
            )
            reply = await self.run(fn, keys, args)  # raised (not known to have run): the count stays taken
            if reply[0] != "ok":
                await self.reserve(batch, -1)
            return reply

        return await self._on_coupon(code, coupon_type, call)

    async def _on_coupon(
        self, code: str, coupon_type: CouponType | None, call: Callable[[Keys], Awaitable[Any]]
    ) -> list[Any]:
        """``call(slot)`` in each slot coupon ``code`` may be in, until one has it; its reply,
        or its error raised. Keyed, each slot keeps its own answer (the last one says)."""
        for k in self.placement.slots_of(code, coupon_type):
            reply: list[Any] = await call(k)
            if reply[0] != "coupon_not_found":
                break
        raise_if_error(reply, USE_DETAIL, code=code)
        return reply
