"""check's rules for the coupons of one slot: each coupon hash, the sorted sets, the counters.

Per coupon hash ``{ns}:c:<code>``:
- its fields are whole: a known type, and expiry, max_usages, allocated and used integers;
- each holder field ``u:<user>`` reads as codec.holder_state() reads it: allocated_at, then
  nothing (allocated), ":" and redeemed_at, "h" and a hold's deadline, or "x" and the
  deadline of a hold that lapsed (the user holds the coupon no more);
- allocated equals its holders but lapsed ones (one holder field per user) and is at most
  max_usages: no usage is handed out twice, and a user holds a code at most once;
- used equals its redeemed holders, and each redemption is not earlier than the
  allocation it redeems;
- each hold ("h") has its timer "<code> <user>" in its type's timers ``{ns}:due:<TYPE>``,
  scored by the same deadline, and each such timer is a hold of that user's;
- each lapsed hold ("x") is in the user's lapsed listing ``{ns}:lapsed:<TYPE>:<user>``;
- a scheduled coupon (its start, "<code>", in its type's timers) is in no sorted set and
  its start ``st`` is the timer's score; any other is in exactly one sorted set, with its
  expiry as the score: its type's available set while it has a free usage,
  ``{ns}:exhausted`` once it has none, or none at all once the purge retired it (expired,
  redeemed at least once).
Per sorted set: every member has a coupon hash; every draining coupon (see lib.lua) is in
its type's available set, and a coupon in its available set with no free usage is
draining. Per type: ``created - purged`` equals the coupons stored, ``used`` (net of
rollbacks) equals the redemptions recorded, ``allocated`` (net of releases and lapsed
holds) is at least the allocations recorded (the purge deletes never-redeemed coupons with
their allocations, so the counter can only be larger), ``held`` equals the holds' timers
and ``scheduled`` the starts'. Expired coupons still in an available set are not a
violation: allocation skips them and the purge removes them; they are counted apart. An
expired coupon may sit in ``{ns}:exhausted`` with a free usage (a release after expiry
leaves it out of the pool). A hold or a start past its time is not a violation either
until settle() (lib.lua) carries it out: its timer and its state still agree.
Batches: a disabled coupon (its own ``off``, or its batch's rule "d" in ``{ns}:rules``) may
sit in ``{ns}:exhausted`` with a free usage (an allocation or the batch's tidy set it aside),
and so may any coupon of a batch whose tidy job is pending (``{ns}:jobs``, main slot: it
puts them back). Each batch's counters in the slot (``{ns}:bstat:<batch>``) equal what its
coupons hold: live:<TYPE> (coupons not purged), off:<TYPE> (those disabled on their own),
usages and allocated (of those), used (all), and created - purged the live ones; per type,
the stats' ``disabled`` equals the live coupons disabled on their own or with their batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import cast

from redis.asyncio import Redis

from ..models import CouponType
from ..pool.keys import BatchCount, CouponField, Keys
from .batched import each, hashes, sorted_sets
from .common import holder_state

TYPES = tuple(t.value for t in CouponType)
_HOLDER = CouponField.HOLDER.value
_MARKS = ("", ":", "h", "x")  # allocated, redeemed, held, a hold that lapsed (codec.holder_state)


class CouponRules:
    """The coupons of one slot, checked as they are read; ``bad`` takes each violation."""

    def __init__(self, keys: Keys, now_ms: int, bad: Callable[[str], None]) -> None:
        self.keys, self.now_ms, self.bad = keys, now_ms, bad
        self.available = {t: keys.available(CouponType(t)) for t in TYPES}
        self.due = {t: keys.due(CouponType(t)) for t in TYPES}
        self.members: dict[str, dict[str, float]] = {}  # sorted set -> {code: score}
        self.holds: dict[str, dict[str, list[tuple[str, float]]]] = {}  # code -> {user: [(timers, deadline)]}
        self.starts: dict[str, list[tuple[str, float]]] = {}  # code -> [(timers, starts_at)]
        self.timers: Counter[str] = Counter()  # "<TYPE>:held" and "<TYPE>:scheduled": timers of each
        self.lapsed: list[tuple[str, str, str]] = []  # (code, type, user) of a batch's lapsed holds
        self.draining: set[str] = set()
        self.seen: set[str] = set()  # codes with a coupon hash
        self.awaiting_purge = 0
        self.stored: Counter[str] = Counter()
        self.allocations: Counter[str] = Counter()
        self.redemptions: Counter[str] = Counter()
        self.disabled_batches: set[str] = set()
        self.tidying: set[str] = set()  # batches whose tidy job is pending
        self.batch_counts: dict[str, Counter[str]] = {}  # batch -> its counters, from its coupons
        self.disabled: Counter[str] = Counter()  # type -> live coupons disabled

    async def load(self, redis: Redis) -> None:
        """The slot's sorted sets and batch rules, before any coupon is checked against them."""
        rules = cast(dict[str, str], await redis.hgetall(self.keys.rules))
        self.disabled_batches = {batch for batch, rule in rules.items() if rule.startswith("d")}
        jobs = cast(list[str], await redis.zrange(Keys(self.keys.namespace).jobs, 0, -1))
        self.tidying = {job.partition(" ")[2] for job in jobs if job.startswith("tidy ")}
        scored = await sorted_sets(redis, [*self.available.values(), self.keys.exhausted])
        self.members = {key: dict(entries) for key, entries in scored.items()}
        timers = await sorted_sets(redis, list(self.due.values()))
        for t, key in self.due.items():
            for member, score in timers[key]:
                code, space, user = member.partition(" ")
                if space:
                    self.holds.setdefault(code, {}).setdefault(user, []).append((key, score))
                else:
                    self.starts.setdefault(code, []).append((key, score))
                self.timers[f"{t}:{'held' if space else 'scheduled'}"] += 1
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
        await self._lapsed_listed(redis)

    async def _lapsed_listed(self, redis: Redis) -> None:
        """Each lapsed hold of the batch is in its user's lapsed listing."""
        lapsed, self.lapsed = self.lapsed, []
        keys = self.keys
        scores = await each(
            redis, lapsed, lambda pipe, h: pipe.zscore(keys.lapsed(CouponType(h[1]), h[2]), h[0])
        )
        for (code, ctype, user), score in zip(lapsed, scores, strict=True):
            if score is None:
                self.bad(f"coupon {code!r}: holder {user!r}'s hold lapsed, but "
                         f"{keys.lapsed(CouponType(ctype), user)} does not list it")  # fmt: skip

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
        holders = {name[len(_HOLDER) :]: holder_state(state) for name, state in fields.items()
                   if name.startswith(_HOLDER)}  # fmt: skip
        redeemed = lapsed = 0
        for user, (allocated_at, mark, at) in holders.items():
            if not allocated_at.isdigit() or mark not in _MARKS or (mark != "") != at.isdigit():
                bad(f"holder {user!r} has a malformed record {fields[_HOLDER + user]!r}")
            elif mark == ":":
                redeemed += 1
                if int(at) < int(allocated_at):
                    bad(f"holder {user!r} redeemed before it was allocated")
            elif mark == "h":
                self._hold(code, ctype, user, int(at), bad)
            elif mark == "x":
                lapsed += 1
                self.lapsed.append((code, ctype, user))
        for user, timers in self.holds.get(code, {}).items():
            if user not in holders or holders[user][1] != "h":
                state = fields.get(_HOLDER + user)
                for key, deadline in timers:
                    bad(f"{key} has the hold '{code} {user}' ({deadline:.0f}), but the user's holder field "
                        f"is {state!r}, not a hold")  # fmt: skip
        holding = len(holders) - lapsed
        self.allocations[ctype] += holding
        self.redemptions[ctype] += redeemed
        if allocated != holding:
            bad(f"{CouponField.ALLOCATED} is {allocated} but {holding} users hold it")
        if allocated > max_usages:
            bad(f"{allocated} usages allocated, more than its {max_usages}")
        if used != redeemed:
            bad(f"{CouponField.USED} is {used} but {redeemed} holders redeemed it")
        batch, off = fields.get(CouponField.BATCH), CouponField.DISABLED in fields
        switched_off = off or batch in self.disabled_batches
        if code in self.starts:
            self._scheduled(code, ctype, fields.get(CouponField.STARTS), bad)
            live = True
        else:
            live = self._placement(
                code, ctype, expires, allocated, max_usages, used, bad, switched_off, batch
            )
        if batch is not None:
            counts = self.batch_counts.setdefault(batch, Counter())
            counts[BatchCount.USED] += used
            if live:
                counts[BatchCount.LIVE + ctype] += 1
                counts[BatchCount.OFF + ctype] += off
                counts[BatchCount.USAGES] += max_usages
                counts[BatchCount.ALLOCATED] += allocated
        if live and switched_off:
            self.disabled[ctype] += 1

    def _hold(self, code: str, ctype: str, user: str, deadline: int, bad: Callable[[str], None]) -> None:
        """A hold until ``deadline`` has its timer, in its type's timers, at that deadline."""
        timers = self.due[ctype]
        found = self.holds.get(code, {}).get(user, [])
        if (timers, deadline) not in found:
            bad(f"holder {user!r} holds it until {deadline}, but {timers} has no '{code} {user}' then")
        for key, score in found:
            if (key, score) != (timers, deadline):
                bad(f"holder {user!r} holds it until {deadline}, but '{code} {user}' is scored {score:.0f} "
                    f"in {key}")  # fmt: skip

    def _scheduled(self, code: str, ctype: str, starts: str | None, bad: Callable[[str], None]) -> None:
        """A scheduled coupon: its start in its type's timers, and in no sorted set until then."""
        for timers, score in self.starts[code]:
            if timers != self.due[ctype]:
                bad(f"its start is in {timers}, not the timers of its type {ctype}")
            elif starts is None or not starts.isdigit() or int(starts) != score:
                bad(f"scheduled at {score:.0f} in {timers}, but its {CouponField.STARTS} is {starts!r}")
        found = [key for key, codes in self.members.items() if code in codes]
        if found:
            bad(f"scheduled (its start is in {self.starts[code][0][0]}), yet in {found}")

    def _placement(self, code: str, ctype: str, expires: int, allocated: int, max_usages: int, used: int,
                   bad: Callable[[str], None], switched_off: bool, batch: str | None) -> bool:  # fmt: skip
        """The one sorted set a coupon belongs in, by its expiry, usages, type and whether it is
        disabled; whether it is live (not retired by the purge)."""
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
            return False
        elif found[0] == exhausted:
            set_aside = switched_off or batch in self.tidying
            if allocated < max_usages and expires > now_ms and not set_aside:
                bad(f"in {exhausted} with a free usage ({allocated} of {max_usages})")
        else:
            if found[0] != self.available[ctype]:
                bad(f"in {found[0]}, not the available set of its type {ctype}")
            if allocated >= max_usages and code not in self.draining:
                bad(f"available with no free usage ({allocated} of {max_usages}), and not draining")
            if expires <= now_ms:
                self.awaiting_purge += 1
        return True

    def batches(self, stored: dict[str, dict[str, str]]) -> None:
        """Each batch's counters in the slot (``stored``: batch -> its {ns}:bstat hash) against
        what its coupons hold."""
        for batch in stored.keys() | self.batch_counts.keys():
            counted = {name: int(value) for name, value in stored.get(batch, {}).items()}
            found = self.batch_counts.get(batch, Counter())
            for name in {*found, *(n for n in counted if n != BatchCount.CREATED and n != BatchCount.PURGED)}:
                if counted.get(name, 0) != found[name]:
                    where = self.keys.batch_stats(batch)
                    self.bad(f"batch {batch!r}: {name} is {counted.get(name, 0)} in {where}, "
                             f"but its coupons make {found[name]}")  # fmt: skip
            live = sum(n for name, n in found.items() if name.startswith(BatchCount.LIVE))
            created, purged = counted.get(BatchCount.CREATED, 0), counted.get(BatchCount.PURGED, 0)
            if created - purged != live:
                self.bad(f"batch {batch!r}: created {created} - purged {purged} != {live} coupons not purged")

    def finish(self, counters: dict[str, int]) -> None:
        """Once every coupon is read: members with no hash, and the stats counters (``counters``)."""
        for key, codes in self.members.items():
            for code in codes.keys() - self.seen:
                self.bad(f"{key} holds {code!r}, which has no coupon hash")
        for code in self.holds.keys() - self.seen:
            for user, timers in self.holds[code].items():
                for key, _ in timers:
                    self.bad(f"{key} has the hold '{code} {user}', whose coupon has no hash")
        for code in self.starts.keys() - self.seen:
            for key, _ in self.starts[code]:
                self.bad(f"{key} has the start of {code!r}, which has no coupon hash")
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
            if counters.get(f"{t}:disabled", 0) != self.disabled[t]:
                self.bad(f"{t}: disabled counter {counters.get(f'{t}:disabled', 0)} != {self.disabled[t]} "
                         "coupons disabled")  # fmt: skip
            for counter, what in ((f"{t}:held", "holds"), (f"{t}:scheduled", "starts")):
                if counters.get(counter, 0) != self.timers[counter]:
                    self.bad(f"{t}: {counter.partition(':')[2]} counter {counters.get(counter, 0)} != "
                             f"{self.timers[counter]} {what} in {self.due[t]}")  # fmt: skip
