"""The Redis layout, written once: every key name, and the fields of a coupon hash.

Every key of a pool is under one of its hash tags, so every script call touches a single
Redis Cluster slot: ``{<namespace>}`` (the main slot), and with POOL_SHARDS above 1 one
tag per shard, ``{<namespace>:<i>}``. The same tables are in docs/architecture.md.
"""

from __future__ import annotations

import zlib
from enum import StrEnum

from ..models import CouponType


class Keys:
    """The keys of one slot of a pool: the main slot, or shard ``shard``'s."""

    def __init__(self, namespace: str, shard: int | None = None) -> None:
        self.namespace = namespace
        self.shard = shard
        tag = "{" + namespace + ("" if shard is None else f":{shard}") + "}"
        self.tag = tag
        self.slot = f"{tag}:"  # every key of the slot starts so (the functions build some from it)
        self.stats = self.slot + KeyPart.STATS
        self.exhausted = self.slot + KeyPart.EXHAUSTED
        self.coupon_prefix = self.slot + KeyPart.COUPON
        self.audit = self.slot + KeyPart.AUDIT
        # Events (feeds.py): per slot, the entries dropped though a group needed them; in the
        # main slot, the consumer groups (name -> kind).
        self.audit_dropped = self.slot + KeyPart.AUDIT_DROPPED
        self.feeds = self.slot + KeyPart.FEEDS
        # Pool-low events (levels.py), main slot: each type's level against its threshold.
        self.levels = self.slot + KeyPart.LEVELS
        self.purge_lock = f"{tag}:purge:lock"
        # Webhooks (http/delivery.py): per endpoint, the lease on this slot's stream and the
        # batches parked after their retries ran out (a list of JSON, oldest first); in the
        # main slot, the endpoint's counters (deliveries, failures, retries, parked).
        self.webhook_lease_prefix = self.slot + KeyPart.WEBHOOK_LEASE  # then the endpoint
        self.webhook_parked_prefix = self.slot + KeyPart.WEBHOOK_PARKED  # then the endpoint
        self.webhook_counts_prefix = self.slot + KeyPart.WEBHOOK_COUNTS  # main slot; then the endpoint
        self.available_prefix = self.slot + KeyPart.AVAILABLE  # then the type
        self.draining_prefix = self.slot + KeyPart.DRAINING  # then the type
        self.due_prefix = self.slot + KeyPart.DUE  # then the type
        self.lapsed_prefix = self.slot + KeyPart.LAPSED  # then "<TYPE>:<user>"
        # Batches (campaigns): each slot keeps the rules of the batches with coupons in it
        # (batch -> "d" disabled, "c<n>" capped at n redemptions, or both), and per batch its
        # counters and its codes (a list, upload order); the main slot keeps the batch records.
        self.rules = self.slot + KeyPart.RULES
        self.batch_stats_prefix = self.slot + KeyPart.BATCH_STATS  # then the batch
        self.batch_codes_prefix = self.slot + KeyPart.BATCH_CODES  # then the batch
        self.batch_prefix = self.slot + KeyPart.BATCH  # main slot: then the batch
        self.batches = self.slot + KeyPart.BATCHES  # main slot: every batch id (score 0, by id)
        self.jobs = self.slot + KeyPart.JOBS  # main slot: "<kind> <batch>" -> lease end ms
        self.job_owners = self.slot + KeyPart.JOB_OWNERS  # main slot: "<kind> <batch>" -> runner
        self._available = {t: f"{self.available_prefix}{t.value}" for t in CouponType}
        self.megadeal_queue = f"{tag}:mega:queue"
        self.megadeal_alive = f"{tag}:mega:alive"
        self.megadeal_slots = f"{tag}:mega:slots"
        self.megadeal_window = f"{tag}:mega:window"
        self.megadeal_heard = f"{tag}:mega:heard"
        self.megadeal_ticket = f"{tag}:mega:ticket"
        self.megadeal_high_water = f"{tag}:mega:hwm"
        self.megadeal_wake_prefix = f"{tag}:mega:wake:"
        self.held_prefix = self.slot + KeyPart.HELD
        self.tracked_prefix = self.slot + KeyPart.TRACKED
        self.user_prefix = self.slot + KeyPart.LISTING
        self._draining = {t: f"{self.draining_prefix}{t.value}" for t in CouponType}
        self._held_of_type = {t: f"{self.held_prefix}{t.value}:" for t in CouponType}
        self._listing_of_type = {t: f"{self.user_prefix}{t.value}:" for t in CouponType}
        self.idempotency_prefix = f"{tag}:idem:"
        self.failed_lookups_prefix = f"{tag}:lookups:"
        self.shard_count = f"{tag}:shards"  # main slot: POOL_SHARDS, recorded on first use
        # In a shard: the codes of MEGADEAL coupons (which live in the main slot) whose home
        # this shard is, code -> "<expires_at ms> <upload line>": codes stay unique pool-wide.
        self.megadeal_claims = f"{tag}:megaclaims"

    def coupon(self, code: str) -> str:
        """The hash of one coupon; ``code`` must already be validated."""
        return self.coupon_prefix + code

    def held(self, coupon_type: CouponType, user_id: str) -> str:
        """The coupons of a type that a user holds and that have a free usage (see lib.lua)."""
        return self._held_of_type[coupon_type] + user_id

    def held_type_prefix(self, coupon_type: CouponType) -> str:
        return self._held_of_type[coupon_type]

    def user_coupons(self, coupon_type: CouponType, user_id: str) -> str:
        """The coupons of a type a user holds, by allocation time; ``user_id`` must be validated."""
        return self._listing_of_type[coupon_type] + user_id

    def lapsed(self, coupon_type: CouponType, user_id: str) -> str:
        """The user's holds of a type that ended unconfirmed (code -> allocated_at ms)."""
        return f"{self.lapsed_prefix}{coupon_type.value}:{user_id}"

    def batch_stats(self, batch: str) -> str:
        """The batch's counters in this slot; ``batch`` must be validated (models.BatchId)."""
        return self.batch_stats_prefix + batch

    def batch_codes(self, batch: str) -> str:
        """The codes of the batch stored in this slot, in upload order (a list)."""
        return self.batch_codes_prefix + batch

    def batch(self, batch: str) -> str:
        """The batch's record (in the main slot): type, created_at, rules, its generation."""
        return self.batch_prefix + batch

    def due(self, coupon_type: CouponType) -> str:
        """The type's timers: holds (``"<code> <user>"`` -> deadline ms) and starts of scheduled
        coupons (``"<code>"`` -> starts_at ms); see settle() in lib.lua."""
        return self.due_prefix + coupon_type.value

    def draining(self, coupon_type: CouponType) -> str:
        """Coupons of a type with no free usage still listed in held sets (see lib.lua)."""
        return self._draining[coupon_type]

    def idempotency(self, scope: str, key_digest: str) -> str:
        """The record of an Idempotency-Key: ``scope`` names the caller, the digest the key."""
        return f"{self.idempotency_prefix}{scope}:{key_digest}"

    def failed_lookups(self, scope: str) -> str:
        """A caller's budget of failed lookups; ``scope`` names the caller (its API key id)."""
        return self.failed_lookups_prefix + scope

    def key_claim(self, record: str) -> str:
        """In a sharded pool, the claim of an Idempotency-Key in its own shard: the request's
        fingerprint, so the key is refused for another request whatever slots each writes."""
        return f"{self.tag}:idemkey:" + record[record.index(":idem:") + 6 :]

    def webhook_lease(self, endpoint: str) -> str:
        """Who delivers this slot's stream to ``endpoint`` (a name of feeds.GROUP_PATTERN)."""
        return self.webhook_lease_prefix + endpoint

    def webhook_parked(self, endpoint: str) -> str:
        """The batches of this slot's stream that ``endpoint`` never took, parked."""
        return self.webhook_parked_prefix + endpoint

    def webhook_counts(self, endpoint: str) -> str:
        """``endpoint``'s delivery counters, all processes (a hash; the main slot's only)."""
        return self.webhook_counts_prefix + endpoint

    def megadeal_wake(self, ticket: str) -> str:
        """The list a MEGADEAL waiter blocks on; ``ticket`` comes from the ticket counter."""
        return self.megadeal_wake_prefix + ticket

    def available(self, coupon_type: CouponType) -> str:
        return self._available[coupon_type]

    def all_available(self) -> list[str]:
        """The available sets, in the order of CouponType."""
        return [self._available[t] for t in CouponType]


class Layout:
    """Where a pool's data lives: the main slot, and the shards of the FREE and STANDARD pools.

    With one shard, the shard is the main slot (today's keys, on one node or in one slot of
    a cluster). With more, shard ``i`` is ``{<namespace>:<i>}``; MEGADEAL coupons and the
    gate stay in the main slot, so admission and allocation remain one script.
    """

    def __init__(self, namespace: str, shards: int = 1) -> None:
        self.main = Keys(namespace)
        self.shards = [self.main] if shards == 1 else [Keys(namespace, i) for i in range(shards)]
        self.sharded = shards > 1
        # Every slot, main first: what stats, the purge, the audit trail and check walk.
        self.slots = [self.main] if shards == 1 else [self.main, *self.shards]

    def home(self, code: str) -> Keys:
        """The shard of a code: where its coupon lives (or, for a MEGADEAL coupon, its claim)."""
        if not self.sharded:
            return self.main
        return self.shards[zlib.crc32(code.encode()) % len(self.shards)]

    def of(self, code: str, coupon_type: CouponType) -> Keys:
        """The slot that holds coupon ``code`` of type ``coupon_type``."""
        return self.main if coupon_type is CouponType.MEGADEAL else self.home(code)


class KeyPart(StrEnum):
    """What follows a slot's ``{tag}:`` in its key names. The functions see each as a constant
    ``K_<NAME>``, so a function given only the slot (``slot``, "{ns}:") names its keys as Keys does."""

    STATS = "stats"
    EXHAUSTED = "exhausted"
    COUPON = "c:"  # then the code
    AUDIT = "audit"
    AUDIT_DROPPED = "audit:dropped"
    FEEDS = "feeds"  # main slot
    LEVELS = "levels"  # main slot
    WEBHOOK_LEASE = "hook:lease:"  # then the endpoint
    WEBHOOK_PARKED = "hook:parked:"  # then the endpoint
    WEBHOOK_COUNTS = "hook:counts:"  # main slot; then the endpoint
    AVAILABLE = "avail:"  # then the type
    DRAINING = "draining:"  # then the type
    HELD = "held:"  # then "<TYPE>:<user>"
    TRACKED = "trk:"  # then the code
    LISTING = "user:"  # then "<TYPE>:<user>"
    DUE = "due:"  # then the type
    LAPSED = "lapsed:"  # then "<TYPE>:<user>"
    RULES = "rules"  # batch -> its rules in this slot
    BATCH_STATS = "bstat:"  # then the batch
    BATCH_CODES = "bcodes:"  # then the batch
    BATCH = "batch:"  # then the batch (main slot)
    BATCHES = "batches"  # main slot
    JOBS = "jobs"  # main slot
    JOB_OWNERS = "jobowners"  # main slot


class CouponField(StrEnum):
    """The fields of a coupon hash ``{ns}:c:<code>``; short, so the hash stays a listpack.

    The Lua scripts see each as a constant ``F_<NAME>`` (scripts.py puts them before
    every script), so neither side spells a field name of its own.
    """

    TYPE = "type"
    DISCOUNT_KIND = "dk"
    DISCOUNT_VALUE = "dv"
    EXPIRES = "exp"  # expires_at, ms since the epoch
    MAX_USAGES = "max"
    ALLOCATED = "alloc"  # usages allocated
    USED = "used"  # usages redeemed
    CREATED = "ct"  # created_at, ms
    STARTS = "st"  # starts_at, ms; only when the upload gave one
    METADATA = "md"  # the metadata, as JSON; only when the upload gave some
    BATCH = "b"  # the batch it was uploaded or generated in; none for coupons from before batches
    DISABLED = "off"  # "1" while disabled on its own (its batch may be disabled as a whole)
    RETIRED = "rt"  # "1" once the purge retired it (expired, redeemed: kept for its history)
    LISTED = "bi"  # its index in its batch's code list in its slot: the one entry that is it
    # One field per holder, "u:<user_id>": "<allocated_at ms>", then
    # "<allocated_at ms>:<redeemed_at ms>" once redeemed. A hold is "<allocated_at ms>h<deadline
    # ms>" until redeemed (then as above) or released; one that ended unconfirmed stays as
    # "<allocated_at ms>x<deadline ms>" (the user holds the coupon no more).
    HOLDER = "u:"


class RecordField(StrEnum):
    """The fields of an Idempotency-Key record ``{ns}:idem:<scope>:<key digest>``.

    The Lua scripts see each as a constant ``R_<NAME>``, as they see CouponField's.
    """

    FINGERPRINT = "fp"  # the request's (idempotency.fingerprint)
    REPLY = "reply"  # the answer, as JSON, once there is one
    OWNER = "owner"  # while a multi-call operation runs: the attempt that owns the key
    LEASE = "lease"  # until when (ms) it owns it
    CHUNK = "chunk"  # an upload's chunk size, kept so a resumed upload chunks alike
    PART = "part:"  # an upload's chunk outcome, "part:<i>": {created, duplicate positions}


class BucketField(StrEnum):
    """The fields of a caller's budget of failed lookups ``{ns}:lookups:<scope>`` (a token
    bucket); the Lua functions see each as a constant ``B_<NAME>``."""

    TOKENS = "tokens"  # what is left, a decimal number
    AT = "at"  # when it was counted, ms


class BatchField(StrEnum):
    """The fields of a batch's record ``{ns}:batch:<id>`` (main slot); the Lua functions see
    each as a constant ``A_<NAME>``."""

    TYPE = "type"  # FREE, STANDARD, MEGADEAL, or MIXED
    CREATED_AT = "created_at"  # ms
    SOURCE = "source"  # upload or generation
    DISABLED = "disabled"  # 0 or 1
    MAX_REDEMPTIONS = "max_redemptions"  # the cap; absent without one
    REDEEMED = "redeemed"  # redemptions counted against the cap


class BatchCount(StrEnum):
    """The counters of a batch in one slot ``{ns}:bstat:<id>``; the Lua functions see each as
    a constant ``N_<NAME>``."""

    CREATED = "created"  # coupons stored
    USAGES = "usages"  # max usages of the coupons not purged
    ALLOCATED = "allocated"  # usages allocated now, of the coupons not purged
    USED = "used"  # redemptions, net of rollbacks
    PURGED = "purged"  # coupons the purge took
    LIVE = "live:"  # then the type: coupons not purged
    OFF = "off:"  # then the type: coupons not purged disabled on their own


class LevelField(StrEnum):
    """The fields of the pool-low states ``{ns}:levels`` (main slot, levels.py); the Lua
    functions see each as a constant ``L_<NAME>``. Each but TICKET is followed by the type."""

    TICKET = "ticket"  # taken by each check before it reads the counters (HINCRBY)
    SEEN = "seen:"  # the ticket of the latest check applied to the type: older ones are not
    STATE = "state:"  # "low" while the type is below its threshold, else "ok"
    AVAILABLE = "available:"  # what that check read
    THRESHOLD = "threshold:"  # the threshold it applied (coupons)
