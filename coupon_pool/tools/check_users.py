"""check's rules for the per-user structures of lib.lua (allocation, releases, listings).

- every unexpired entry of a held set ``{ns}:held:<TYPE>:<user>`` is a coupon of that type
  in its available set, held by that user, scored by its expiry, and the coupon's tracked
  set ``{ns}:trk:<code>`` names the user (a held set may lack entries, never have extra);
- every user a tracked set of an unexpired coupon names lists the coupon in their held set;
- every entry of a listing ``{ns}:user:<TYPE>:<user>`` whose coupon still exists is a
  coupon of that type held by the user (allocated, redeemed or held: not a hold that
  lapsed), scored by its allocated_at;
- every entry of a lapsed listing ``{ns}:lapsed:<TYPE>:<user>`` whose coupon still exists
  is a coupon of that type whose holder field for the user is a hold that lapsed ("x"),
  scored by its allocated_at.
A user "holds" a coupon while its holder field is there and not a lapsed hold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from ..models import CouponType
from ..pool.keys import CouponField, Keys
from .batched import each, set_members, sorted_sets
from .check_coupons import TYPES
from .common import holder_state


class UserRules:
    """The per-user structures of one slot, a batch of keys at a time; ``bad`` takes each violation."""

    def __init__(self, keys: Keys, now_ms: int, bad: Callable[[str], None]) -> None:
        self.keys, self.now_ms, self.bad = keys, now_ms, bad

    async def held_sets(self, redis: Redis, held_keys: Sequence[str]) -> None:
        keys, prefix = self.keys, self.keys.held_prefix
        members = await sorted_sets(redis, held_keys)
        entries = []  # (held set, its user, the available set of its type, code, score)
        for held in held_keys:
            ctype, _, user = held[len(prefix) :].partition(":")
            if ctype not in TYPES:
                self.bad(f"{held} is a held set of no known type")
                continue
            available = keys.available(CouponType(ctype))
            entries += [(held, user, available, code, score) for code, score in members[held]
                        if score > self.now_ms]  # fmt: skip

        def queue(pipe: Pipeline, entry: tuple[str, str, str, str, float]) -> None:
            _, user, available, code, _ = entry
            pipe.hmget(keys.coupon(code), [CouponField.EXPIRES, CouponField.HOLDER + user])
            pipe.zscore(available, code)
            pipe.sismember(keys.tracked_prefix + code, user)

        found = await each(redis, entries, queue, calls_per_item=3)
        for i, (held, _, available, code, score) in enumerate(entries):
            (expires, holder), in_available, is_tracked = found[3 * i : 3 * i + 3]
            where = f"{held} lists {code!r}"
            if holder is None or holder_state(holder)[1] == "x":
                self.bad(f"{where}, which the user does not hold")
            elif in_available is None:
                self.bad(f"{where}, which is not in {available}")
            elif expires is None or int(expires) != score:
                self.bad(f"{where} scored {score:.0f}, not its expiry {expires}")
            if not is_tracked:
                self.bad(f"{where}, but {keys.tracked_prefix}{code} does not name the user")

    async def tracked_sets(self, redis: Redis, tracked_keys: Sequence[str]) -> None:
        keys, prefix = self.keys, self.keys.tracked_prefix
        codes = [tracked[len(prefix) :] for tracked in tracked_keys]
        fields = [CouponField.TYPE, CouponField.EXPIRES]
        coupons = await each(redis, codes, lambda pipe, code: pipe.hmget(keys.coupon(code), fields))
        # An expired coupon's holders drop it from their held sets; the purge drops its tracked set.
        live = {tracked: (code, kind) for tracked, code, (kind, expires) in zip(tracked_keys, codes, coupons,
                strict=True) if expires and int(expires) > self.now_ms}  # fmt: skip
        members = await set_members(redis, list(live))
        entries = []  # (tracked set, code, the held set its holder should list it in, holder)
        for tracked, (code, kind) in live.items():
            for holder in sorted(members[tracked]):
                if kind in TYPES:
                    entries.append((tracked, code, keys.held(CouponType(kind), holder), holder))
                else:
                    self.bad(f"{tracked} names {holder!r}, whose held set does not list {code!r}")
        scores = await each(redis, entries, lambda pipe, entry: pipe.zscore(entry[2], entry[1]))
        for (tracked, code, _, holder), score in zip(entries, scores, strict=True):
            if score is None:
                self.bad(f"{tracked} names {holder!r}, whose held set does not list {code!r}")

    async def listings(self, redis: Redis, listing_keys: Sequence[str]) -> None:
        for listing, ctype, code, score, found_type, state in await self._entries(
            redis, listing_keys, self.keys.user_prefix
        ):
            if found_type is None:
                continue  # purged: dropped from the listing when a page meets it
            at, mark, _ = holder_state(state)
            if state is None:
                self.bad(f"{listing} lists {code!r}, which the user does not hold")
            elif mark == "x":
                self.bad(f"{listing} lists {code!r}, whose hold lapsed (it belongs in the lapsed listing)")
            elif found_type != ctype:
                self.bad(f"{listing} lists {code!r}, of type {found_type}")
            elif not at.isdigit() or int(at) != score:
                self.bad(f"{listing} scores {code!r} {score:.0f}, not its allocated_at {state}")

    async def lapsed_listings(self, redis: Redis, lapsed_keys: Sequence[str]) -> None:
        for lapsed, ctype, code, score, found_type, state in await self._entries(
            redis, lapsed_keys, self.keys.lapsed_prefix
        ):
            if found_type is None:
                continue  # purged, as in a listing
            at, mark, _ = holder_state(state)
            if mark != "x":
                self.bad(f"{lapsed} lists {code!r}, whose holder field is {state!r}, not a hold that lapsed")
            elif found_type != ctype:
                self.bad(f"{lapsed} lists {code!r}, of type {found_type}")
            elif not at.isdigit() or int(at) != score:
                self.bad(f"{lapsed} scores {code!r} {score:.0f}, not its allocated_at {state}")

    async def _entries(
        self, redis: Redis, listing_keys: Sequence[str], prefix: str
    ) -> list[tuple[str, str, str, float, str | None, str | None]]:
        """(listing, its type, code, score, the coupon's type, the user's holder field) of each
        entry of listings ``{prefix}<TYPE>:<user>``."""
        keys = self.keys
        members = await sorted_sets(redis, listing_keys)
        entries = []  # (listing, its type, its user, code, score)
        for listing in listing_keys:
            ctype, _, user = listing[len(prefix) :].partition(":")
            entries += [(listing, ctype, user, code, score) for code, score in members[listing]]
        found = await each(
            redis,
            entries,
            lambda pipe, e: pipe.hmget(keys.coupon(e[3]), [CouponField.TYPE, CouponField.HOLDER + e[2]]),
        )
        return [(listing, ctype, code, score, *coupon)
                for (listing, ctype, _, code, score), coupon in zip(entries, found, strict=True)]  # fmt: skip
