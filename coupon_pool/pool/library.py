"""The function library in Redis, and the one way the pool calls it.

One ``Library`` per process, made in the app's lifespan and shared by the store and the
MEGADEAL gate: every call goes through its auto-pipeline (a pipeline per event-loop turn
and node), so the calls of a turn share one write whoever makes them.

The library is loaded at start (on every master of a cluster). Functions persist in the
AOF and RDB and replicate, so a restarted Redis or a promoted replica has them; a Redis
that lost them (FUNCTION FLUSH, a new empty server) answers "Function not found", and the
pipeline loads the library again and sends the call once more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from . import keyed
from .autopipeline import AutoPipeline
from .functions import KEYED_ARGS, Function, build

LIBRARY = build()


def guarded(keys: Sequence[str | bytes]) -> list[str | bytes]:
    """A call's KEYS: its slot's guard first (``{tag}:guard``, a key nothing writes), then
    ``keys`` (the functions skip it). Redis Cluster refuses, with TRYAGAIN, a call on a slot
    being migrated that names a key the node lacks, and the guard is always lacking: so a
    function never runs while its slot moves, when some of the keys it reads without naming
    them (a coupon's hash) could already be on the other node."""
    first = keys[0]
    if isinstance(first, bytes):
        return [first[: first.index(b"}") + 1] + b":guard", *keys]
    return [first[: first.index("}") + 1] + ":guard", *keys]


class Library:
    """The library (``LIBRARY``), loaded into ``redis``, and its calls' pipeline."""

    def __init__(
        self,
        redis: Redis,
        *,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        retry_for_s: float = 2.0,
    ) -> None:
        self.redis = redis
        self.names = LIBRARY.names
        self.pipeline = AutoPipeline(
            redis,
            wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
            retry_for_s=retry_for_s,
            keys_of=guarded,
            reload=self.load,
        )

    async def load(self) -> None:
        """Load the library (on every master of a cluster); the same version again is harmless."""
        await self.redis.function_load(LIBRARY.source, replace=True)

    async def run(
        self,
        fn: Function,
        keys: list[Any],
        args: list[Any],
        *,
        idempotent: bool = False,
        retry_for_s: float | None = None,
    ) -> Any:
        """``fn``'s reply. In a keyed operation (keyed.Keyed) a keyed function's call carries
        the record of its slot, and its reply is unwrapped (a replay, or the key's misuse).

        ``idempotent``: running it twice has the effect of once, so it may be sent again
        after a connection failure (a keyed call always is). ``retry_for_s``: see
        AutoPipeline.run.
        """
        run = keyed.current()
        if run is not None and run.claim is not None:
            claim, run.claim = run.claim, None
            await claim(run)
        name = self.names[fn.name]
        if run is None or not fn.keyed:
            return await self.pipeline.run(name, keys, args, idempotent, retry_for_s)
        first = keys[0] if isinstance(keys[0], str) else keys[0].decode()
        record = run.idem.record_in(first[: first.index("}") + 1])
        at = len(fn.args)
        args = [*args[:at], run.idem.fingerprint, run.idem.ttl_ms, *args[at + len(KEYED_ARGS) :]]
        reply = await self.pipeline.run(name, [*keys, record], args, True, retry_for_s)
        return run.unwrap(reply) if fn.answers else reply
