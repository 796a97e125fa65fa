"""Idempotency-Key (the IETF httpapi draft's header, with Stripe's semantics), applied once.

A caller that lost an answer sends the request again with the same key and gets the
first answer again, with ``Idempotent-Replayed: true``, instead of a second effect. The
record of a key lives in Redis and is written by the same function call as the
operation's effect (lua/lib.lua: idem_lookup, idem_store), so no crash keeps one without
the other.

``Keyed`` wraps a whole operation: while it runs, every call of a keyed function
(functions.Function.keyed) carries the key's record in the call's slot, its replies are
unwrapped (a stored answer replayed, the key's misuse raised), and the wrapper returns the
answer with whether it was replayed. No store method takes the key as a parameter.

Records are scoped to the caller (its API key's id; one shared scope when keys are off)
and kept IDEMPOTENCY_TTL_S. A request is identified by its method, path and body: the
validated body's canonical JSON (so spacing and defaults do not matter), or for an upload
the bytes of its body.
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from redis.asyncio import Redis

from ..errors import CouponError, IdempotencyKeyInProgress, IdempotencyKeyReused
from .keys import Layout

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"  # 1-255 visible ASCII characters
KEY = re.compile(KEY_PATTERN.encode())  # matched against the header's raw bytes
KEY_ID = "coupon_pool.key_id"  # the scope entry auth.py sets: the caller's API key id
OPEN_SCOPE = "open"  # the one scope when API keys are off
T = TypeVar("T")


@dataclass(slots=True)
class Idempotency:
    """A keyed request: its record's Redis key (in the main slot), and its fingerprint."""

    record: str
    fingerprint: str  # "" until identify() for an upload
    ttl_ms: int
    request_line: bytes = b""

    def identify(self, body: bytes) -> None:
        """Fingerprint the request by its body's bytes (an upload's, possibly megabytes)."""
        self.fingerprint = fingerprint(self.request_line, body)

    def record_in(self, tag: str) -> str:
        """The record of the same key in the slot of hash tag ``tag`` (``{cp:3}``)."""
        return tag + self.record[self.record.index("}:idem:") + 1 :]


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What a keyed operation answered, and whether that answer is a replay."""

    value: T
    replayed: bool


class Run:
    """One keyed operation under way: its key, and what its last keyed reply was."""

    __slots__ = ("claim", "idem", "replayed")

    def __init__(self, idem: Idempotency, claim: Callable[[Run], Awaitable[None]] | None) -> None:
        self.idem = idem
        self.claim = claim  # to do before the operation's first call (then None)
        self.replayed = False

    def unwrap(self, reply: list[Any]) -> list[Any]:
        """A function's reply, or the stored one it replays; the key's misuse as an error.
        The last reply unwrapped says whether the operation's answer is a replay."""
        status = reply[0]
        self.replayed = status == "replay"
        if self.replayed:
            stored: list[Any] = orjson.loads(reply[1])
            return stored
        if status == "idempotency_key_reused":
            raise reused()
        if status == "idempotency_key_in_progress":
            raise in_progress(int(reply[1]))
        return reply


_CURRENT: ContextVar[Run | None] = ContextVar("coupon_pool_keyed_run", default=None)


def current() -> Run | None:
    """The keyed operation this task runs in, if any (library.Library.run reads it)."""
    return _CURRENT.get()


def report_replayed(replayed: bool) -> None:
    """Say whether the keyed operation's answer, got elsewhere (the upload worker process,
    which runs it under the same key), is a replay."""
    run = _CURRENT.get()
    if run is not None:
        run.replayed = replayed


class Keyed:
    """Runs an operation under an Idempotency-Key (or none): ``await keyed(idem, op())``."""

    def __init__(self, redis: Redis, layout: Layout) -> None:
        self.redis = redis
        self.layout = layout

    async def __call__(self, idem: Idempotency | None, operation: Awaitable[T]) -> Outcome[T]:
        if idem is None:
            return Outcome(await operation, False)
        run = Run(idem, self.claim if self.layout.sharded else None)
        token = _CURRENT.set(run)
        try:
            value = await operation
        except CouponError as error:
            error.replayed = run.replayed
            raise
        finally:
            _CURRENT.reset(token)
        return Outcome(value, run.replayed)

    async def claim(self, run: Run) -> None:
        """Refuse (422) an Idempotency-Key first sent with another request, in a sharded pool.

        There each operation keeps its records in the slots it writes, so two requests may
        share no slot; the key is claimed in a shard of its own with the request's
        fingerprint (SET NX GET, kept as long as the records), before the operation's first
        call. With one shard the records themselves tell (the functions' idem_lookup).
        """
        idem = run.idem
        shards = self.layout.shards
        claim = shards[zlib.crc32(idem.record.encode()) % len(shards)].key_claim(idem.record)
        first = await self.redis.set(claim, idem.fingerprint, nx=True, get=True, px=idem.ttl_ms)
        if first is not None and first != idem.fingerprint:
            raise reused()


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


def fingerprint(request_line: bytes, body: bytes) -> str:
    return hashlib.sha256(request_line + body).hexdigest()[:32]
