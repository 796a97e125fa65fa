"""The Lua scripts of lua/, as typed attributes of ``Scripts``, and their replies by name.

Each script is sent to Redis as: the coupon hash's field names as constants (from
keys.CouponField), then the parts of lua/lib.lua (the shared helpers) it uses, then the
script itself. Calls go by SHA (redis-py's Script loads the script again on NOSCRIPT).

Only the helpers a script uses, directly or through another helper, go before it: Redis
runs a script's whole text on every call, and defining a Lua function there costs about
a microsecond of Redis time each time (measured: all of lib.lua's helpers added 16 µs to
every call).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from .keys import CouponField, RecordField


def lua_dir() -> Path:
    """The scripts ship inside the wheel as coupon_pool/lua, and live in lua/ in a checkout."""
    packaged = Path(__file__).parent.parent / "lua"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent.parent / "lua"


def preamble() -> str:
    """Lua constants for the fields of a coupon hash (``local F_EXPIRES = 'exp'`` and so on)
    and of an Idempotency-Key record (``R_REPLY``...); and KEYS without its first key, the
    slot's guard (autopipeline.AutoPipeline.run puts it there)."""
    fields = [("F", f) for f in CouponField] + [("R", f) for f in RecordField]
    constants = "".join(f"local {kind}_{f.name} = '{f.value}'\n" for kind, f in fields)
    return constants + "local KEYS = { unpack(KEYS, 2) }\n"


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEFINES = re.compile(r"^local (?:function )?([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)


def _code(text: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines())


def used_helpers(lib: str, script: str) -> str:
    """The parts of ``lib`` (blocks apart by blank lines) that ``script`` uses, in order."""
    blocks = [block for block in lib.split("\n\n") if _DEFINES.search(block)]
    defines = [set(_DEFINES.findall(block)) for block in blocks]
    needed = set(_NAME.findall(_code(script)))
    taken = [False] * len(blocks)
    grew = True
    while grew:  # a helper may use helpers defined before it
        grew = False
        for i in reversed(range(len(blocks))):
            if not taken[i] and defines[i] & needed:
                taken[i] = grew = True
                needed |= set(_NAME.findall(_code(blocks[i])))
    return "".join(block + "\n\n" for block, take in zip(blocks, taken, strict=True) if take)


def source(name: str) -> str:
    folder = lua_dir()
    script = (folder / f"{name}.lua").read_text()
    return preamble() + used_helpers((folder / "lib.lua").read_text(), script) + script


def guarded(keys: Sequence[str | bytes]) -> list[str | bytes]:
    """A script call's KEYS: its slot's guard first (``{tag}:guard``, a key nothing writes),
    then ``keys`` (the preamble takes the guard off again). Redis Cluster refuses, with
    TRYAGAIN, a call on a slot being migrated that names a key the node lacks, and the guard
    is always lacking: so a script never runs while its slot moves, when some of the keys it
    reads without naming them (a coupon's hash) could already be on the other node."""
    first = keys[0]
    if isinstance(first, bytes):
        return [first[: first.index(b"}") + 1] + b":guard", *keys]
    return [first[: first.index("}") + 1] + ":guard", *keys]


class Scripts:
    """Every script, registered with one client; an attribute per file of lua/."""

    def __init__(self, redis: Redis) -> None:
        def load(name: str) -> AsyncScript:
            return redis.register_script(source(name))

        self.upload = load("upload")
        self.allocate = load("allocate")
        self.redeem = load("redeem")
        self.release = load("release")
        self.rollback = load("rollback")
        self.user_coupons = load("user_coupons")
        self.upload_record = load("upload_record")
        self.stats = load("stats")
        self.purge = load("purge")
        self.megadeal_enter = load("megadeal_enter")
        self.megadeal_leave = load("megadeal_leave")
        self.megadeal_forget = load("megadeal_forget")

    def all(self) -> tuple[AsyncScript, ...]:
        return tuple(vars(self).values())


# The replies, by name. A script answers an array: a status word ("ok" or an error
# code), then the fields below, in this order (each script's header says the same).


class Allocated(NamedTuple):
    """allocate.lua's, and megadeal_enter.lua's once admitted: the coupon handed out."""

    code: str
    discount_kind: str
    discount_value: str
    expires_ms: str
    allocated_ms: int


class Redeemed(NamedTuple):
    type: str
    used: int
    max_usages: str
    redeemed_ms: int


class Changed(NamedTuple):
    """release.lua's (total: usages allocated now) and rollback.lua's (total: used now)."""

    type: str
    total: int
    max_usages: str
    at_ms: int


class Waiting(NamedTuple):
    """megadeal_enter.lua's "wait": come back after ``wait_ms`` at the latest."""

    wait_ms: int
    reason: str  # "rate" or "slot"
    rank: int


def pairs(reply: list[Any]) -> dict[str, Any]:
    """A flat {name, value, name, value, ...} reply (stats.lua, purge.lua) as a dict."""
    return dict(zip(reply[::2], reply[1::2], strict=True))
