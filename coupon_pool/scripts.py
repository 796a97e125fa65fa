"""The Lua scripts of lua/, as typed attributes of ``Scripts``, and their replies by name.

Each script is sent to Redis as: the coupon hash's field names as constants (from
keys.CouponField), then lua/lib.lua (the shared helpers), then the script itself. Calls
go by SHA (redis-py's Script loads the script again on NOSCRIPT).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from .keys import CouponField, RecordField


def lua_dir() -> Path:
    """The scripts ship inside the wheel as coupon_pool/lua, and live in lua/ in a checkout."""
    packaged = Path(__file__).parent / "lua"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "lua"


def preamble() -> str:
    """Lua constants for the fields of a coupon hash (``local F_EXPIRES = 'exp'`` and so on)
    and of an Idempotency-Key record (``R_REPLY``...)."""
    fields = [("F", f) for f in CouponField] + [("R", f) for f in RecordField]
    return "".join(f"local {kind}_{f.name} = '{f.value}'\n" for kind, f in fields)


def source(name: str) -> str:
    folder = lua_dir()
    return preamble() + (folder / "lib.lua").read_text() + (folder / f"{name}.lua").read_text()


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
