"""The Redis layout, written once: every key name, and the fields of a coupon hash.

All keys of one pool share the hash tag ``{<namespace>}``, so every script call touches a
single Redis Cluster slot. The same tables are in docs/architecture.md.
"""

from __future__ import annotations

from enum import StrEnum

from .models import CouponType


class Keys:
    def __init__(self, namespace: str) -> None:
        tag = "{" + namespace + "}"
        self.stats = f"{tag}:stats"
        self.exhausted = f"{tag}:exhausted"
        self.coupon_prefix = f"{tag}:c:"
        self.audit = f"{tag}:audit"
        self.purge_lock = f"{tag}:purge:lock"
        self._available = {t: f"{tag}:avail:{t.value}" for t in CouponType}
        self.megadeal_queue = f"{tag}:mega:queue"
        self.megadeal_alive = f"{tag}:mega:alive"
        self.megadeal_slots = f"{tag}:mega:slots"
        self.megadeal_window = f"{tag}:mega:window"
        self.megadeal_ticket = f"{tag}:mega:ticket"
        self.megadeal_high_water = f"{tag}:mega:hwm"
        self.megadeal_wake_prefix = f"{tag}:mega:wake:"
        self.held_prefix = f"{tag}:held:"
        self.tracked_prefix = f"{tag}:trk:"
        self.user_prefix = f"{tag}:user:"
        self._draining = {t: f"{tag}:draining:{t.value}" for t in CouponType}
        self._held_of_type = {t: f"{self.held_prefix}{t.value}:" for t in CouponType}
        self._listing_of_type = {t: f"{self.user_prefix}{t.value}:" for t in CouponType}
        self.idempotency_prefix = f"{tag}:idem:"

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

    def draining(self, coupon_type: CouponType) -> str:
        """Coupons of a type with no free usage still listed in held sets (see lib.lua)."""
        return self._draining[coupon_type]

    def idempotency(self, scope: str, key_digest: str) -> str:
        """The record of an Idempotency-Key: ``scope`` names the caller, the digest the key."""
        return f"{self.idempotency_prefix}{scope}:{key_digest}"

    def megadeal_wake(self, ticket: str) -> str:
        """The list a MEGADEAL waiter blocks on; ``ticket`` comes from the ticket counter."""
        return self.megadeal_wake_prefix + ticket

    def available(self, coupon_type: CouponType) -> str:
        return self._available[coupon_type]

    def all_available(self) -> list[str]:
        """The available sets, in the order of CouponType."""
        return [self._available[t] for t in CouponType]


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
    # One field per holder, "u:<user_id>": "<allocated_at ms>", then
    # "<allocated_at ms>:<redeemed_at ms>" once redeemed.
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
