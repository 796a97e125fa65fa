"""Every Redis key name the service uses, built in one place.

All keys of one pool share the hash tag ``{<namespace>}``, so every script call touches a
single Redis Cluster slot. The same table is in docs/architecture.md.
"""

from __future__ import annotations

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

    def coupon(self, code: str) -> str:
        """The hash of one coupon; ``code`` must already be validated."""
        return self.coupon_prefix + code

    def megadeal_wake(self, ticket: str) -> str:
        """The list a MEGADEAL waiter blocks on; ``ticket`` comes from the ticket counter."""
        return self.megadeal_wake_prefix + ticket

    def available(self, coupon_type: CouponType) -> str:
        return self._available[coupon_type]

    def all_available(self) -> list[str]:
        """The available sets in the fixed order FREE, STANDARD, MEGADEAL."""
        return [self._available[t] for t in CouponType]
