"""check's rules for the coupons of one slot: each coupon hash, the sorted sets, the counters.

Per coupon hash ``{ns}:c:<code>``:
- its fields are whole: a known type, and expiry, max_usages, allocated and used integers;
- allocated equals its holders (one holder field per user) and is at most max_usages: no
  usage is handed out twice, and a user holds a code at most once;
- used equals its redeemed holders, and each redemption is not earlier than the
  allocation it redeems;
- it is in exactly one sorted set, with its expiry as the score: its type's available set
  while it has a free usage, ``{ns}:exhausted`` once it has none, or none at all once the
  purge retired it (expired, redeemed at least once).
Per sorted set: every member has a coupon hash; every draining coupon (see lib.lua) is in
its type's available set, and a coupon in its available set with no free usage is
draining. Per type: ``created - purged`` equals the coupons stored, ``used`` (net of
rollbacks) equals the redemptions recorded, and ``allocated`` (net of releases) is at
least the allocations recorded (the purge deletes never-redeemed coupons with their
allocations, so the counter can only be larger). Expired coupons still in an available set
are not a violation: allocation skips them and the purge removes them; they are counted
apart. An expired coupon may sit in ``{ns}:exhausted`` with a free usage (a release after
expiry leaves it out of the pool).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from redis.asyncio import Redis

from ..models import CouponType
from ..pool.keys import CouponField, Keys
from .batched import hashes, sorted_sets

TYPES = tuple(t.value for t in CouponType)
_HOLDER = CouponField.HOLDER.value


class CouponRules:
    """The coupons of one slot, checked as they are read; ``bad`` takes each violation."""

    def __init__(self, keys: Keys, now_ms: int, bad: Callable[[str], None]) -> None:
        self.keys, self.now_ms, self.bad = keys, now_ms, bad
        self.available = {t: keys.available(CouponType(t)) for t in TYPES}
        self.members: dict[str, dict[str, float]] = {}  # sorted set -> {code: score}
        self.draining: set[str] = set()
        self.seen: set[str] = set()  # codes with a coupon hash
        self.awaiting_purge = 0
        self.stored: Counter[str] = Counter()
        self.allocations: Counter[str] = Counter()
        self.redemptions: Counter[str] = Counter()

    async def load(self, redis: Redis) -> None:
        """The slot's sorted sets, before any coupon is checked against them."""
        scored = await sorted_sets(redis, [*self.available.values(), self.keys.exhausted])
        self.members = {key: dict(entries) for key, entries in scored.items()}
        drains = {t: self.keys.draining(CouponType(t)) for t in TYPES}
        draining = await sorted_sets(redis, list(drains.values()))
        for t, key in drains.items():
            for code, _ in draining[key]:
                self.draining.add(code)
                if code not in self.members[self.available[t]]:
                    self.bad(f"{key} holds {code!r}, not in {self.available[t]}")

    async def read(self, redis: Redis, coupon_keys: Sequence[str]) -> None:
        """Check the coupons whose hashes are ``coupon_keys``."""
        prefix = self.keys.coupon_prefix
        for key, fields in (await hashes(redis, coupon_keys)).items():
            code = key[len(prefix) :]
            # Empty: deleted since SCAN found it. Seen: SCAN may return a key twice (while
            # Redis resizes its table), and a coupon counted twice would break the counters.
            if fields and code not in self.seen:
                self.seen.add(code)
                self.coupon(code, fields)

    def coupon(self, code: str, fields: dict[str, str]) -> None:
        def bad(rule: str) -> None:
            self.bad(f"coupon {code!r}: {rule}")

        ctype = fields.get(CouponField.TYPE)
        try:
            expires, max_usages = int(fields[CouponField.EXPIRES]), int(fields[CouponField.MAX_USAGES])
            allocated, used = int(fields[CouponField.ALLOCATED]), int(fields[CouponField.USED])
        except (KeyError, ValueError):
            bad(f"fields missing or not integers: {sorted(fields)}")
            return
        if ctype not in TYPES:
            bad(f"unknown type {ctype!r}")
            return
        self.stored[ctype] += 1
        holders = [(name[len(_HOLDER) :], state) for name, state in fields.items()
                   if name.startswith(_HOLDER)]  # fmt: skip
        redeemed = 0
        for user, state in holders:
            allocated_at, _, redeemed_at = state.partition(":")
            if not allocated_at.isdigit() or (redeemed_at and not redeemed_at.isdigit()):
                bad(f"holder {user!r} has a malformed record {state!r}")
            elif redeemed_at:
                redeemed += 1
                if int(redeemed_at) < int(allocated_at):
                    bad(f"holder {user!r} redeemed before it was allocated")
        self.allocations[ctype] += len(holders)
        self.redemptions[ctype] += redeemed
        if allocated != len(holders):
            bad(f"{CouponField.ALLOCATED} is {allocated} but {len(holders)} users hold it")
        if allocated > max_usages:
            bad(f"{allocated} usages allocated, more than its {max_usages}")
        if used != redeemed:
            bad(f"{CouponField.USED} is {used} but {redeemed} holders redeemed it")
        self._placement(code, ctype, expires, allocated, max_usages, used, bad)

    def _placement(self, code: str, ctype: str, expires: int, allocated: int, max_usages: int, used: int,
                   bad: Callable[[str], None]) -> None:  # fmt: skip
        """The one sorted set a coupon belongs in, by its expiry, usages and type."""
        found = [key for key, codes in self.members.items() if code in codes]
        for key in found:
            if self.members[key][code] != expires:
                bad(f"scored {self.members[key][code]:.0f} in {key}, not its expiry {expires}")
        exhausted, now_ms = self.keys.exhausted, self.now_ms
        if len(found) > 1:
            bad(f"in more than one sorted set: {found}")
        elif not found:
            if expires > now_ms or used == 0:
                bad("in no sorted set, yet not retired (unexpired, or never redeemed)")
        elif found[0] == exhausted:
            if allocated < max_usages and expires > now_ms:
                bad(f"in {exhausted} with a free usage ({allocated} of {max_usages})")
        else:
            if found[0] != self.available[ctype]:
                bad(f"in {found[0]}, not the available set of its type {ctype}")
            if allocated >= max_usages and code not in self.draining:
                bad(f"available with no free usage ({allocated} of {max_usages}), and not draining")
            if expires <= now_ms:
                self.awaiting_purge += 1

    def finish(self, counters: dict[str, int]) -> None:
        """Once every coupon is read: members with no hash, and the stats counters (``counters``)."""
        for key, codes in self.members.items():
            for code in codes.keys() - self.seen:
                self.bad(f"{key} holds {code!r}, which has no coupon hash")
        for t in TYPES:
            created, purged = counters.get(f"{t}:created", 0), counters.get(f"{t}:purged", 0)
            if created - purged != self.stored[t]:
                self.bad(f"{t}: created {created} - purged {purged} != {self.stored[t]} coupons stored")
            if counters.get(f"{t}:used", 0) != self.redemptions[t]:
                self.bad(f"{t}: used counter {counters.get(f'{t}:used', 0)} != {self.redemptions[t]} "
                         "redemptions recorded")  # fmt: skip
            if counters.get(f"{t}:allocated", 0) < self.allocations[t]:
                self.bad(f"{t}: allocated counter {counters.get(f'{t}:allocated', 0)} < "
                         f"{self.allocations[t]} allocations recorded")  # fmt: skip
