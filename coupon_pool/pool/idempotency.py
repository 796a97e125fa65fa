"""Idempotency-Key (the IETF httpapi draft's header, with Stripe's semantics).

A caller that lost an answer sends the request again with the same key and gets the
first answer again, with ``Idempotent-Replayed: true``, instead of a second effect. The
record of a key lives in Redis and is written by the same script call as the operation's
effect (lua/lib.lua: idem_lookup, idem_store), so no crash keeps one without the other.

Records are scoped to the caller (its API key's id; one shared scope when keys are off)
and kept IDEMPOTENCY_TTL_S. A request is identified by its method, path and body: the
validated body's canonical JSON (so spacing and defaults do not matter), or for an
upload the bytes of its body.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import IdempotencyKeyInProgress, IdempotencyKeyReused

if TYPE_CHECKING:
    from .keys import Keys

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"  # 1-255 visible ASCII characters
KEY = re.compile(KEY_PATTERN.encode())  # matched against the header's raw bytes
KEY_ID = "coupon_pool.key_id"  # the scope entry auth.py sets: the caller's API key id
OPEN_SCOPE = "open"  # the one scope when API keys are off


@dataclass(slots=True)
class Idempotency:
    """A keyed request: its record's Redis key, its fingerprint, and what became of it."""

    record: str
    fingerprint: str  # "" until identify() for an upload
    ttl_ms: int
    request_line: bytes = b""
    replayed: bool = False

    def identify(self, body: bytes) -> None:
        """Fingerprint the request by its body's bytes (an upload's, possibly megabytes)."""
        self.fingerprint = fingerprint(self.request_line, body)

    def unwrap(self, reply: list[Any]) -> list[Any]:
        """A script's reply, or the stored one it replays; the key's misuse as an error."""
        status = reply[0]
        if status == "replay":
            self.replayed = True
            stored: list[Any] = orjson.loads(reply[1])
            return stored
        if status == "idempotency_key_reused":
            raise reused()
        if status == "idempotency_key_in_progress":
            raise in_progress(int(reply[1]))
        return reply


def reused() -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        f"this {HEADER} was first used with another request (method, path or body); "
        "use a new key for a new request"
    )


def in_progress(lease_ms: int) -> IdempotencyKeyInProgress:
    retry_after = max(1, math.ceil(lease_ms / 1000)) if lease_ms > 0 else 1
    return IdempotencyKeyInProgress(
        f"a request with this {HEADER} is under way; send it again once that one is answered",
        headers={"Retry-After": str(min(retry_after, 60))},
    )


def unwrap(idem: Idempotency | None, reply: list[Any]) -> list[Any]:
    return idem.unwrap(reply) if idem else reply


def record_args(idem: Idempotency | None, where: Keys | None = None) -> tuple[list[str], list[str | int]]:
    """The KEYS and ARGV a script takes at its end for a keyed call; nothing without a key.

    ``where``: the slot the call runs in (its record is kept there); else the main slot's.
    """
    if not idem:
        return [], []
    return [where.record_here(idem.record) if where else idem.record], [idem.fingerprint, idem.ttl_ms]


def fingerprint(request_line: bytes, body: bytes) -> str:
    return hashlib.sha256(request_line + body).hexdigest()[:32]
