"""The Lua functions of lua/, each one's KEYS and ARGV declared once, by name, and the library
they make.

A declaration gives both sides of a call: the Python side builds a call's KEYS and ARGV by
name (``ALLOCATE.bind(available=..., user=...)``), and the Lua side gets the same names as
locals, generated before the function's body (``local available, exhausted = keys[2],
keys[3]``...), so no position is written twice. Each file's header documents the same
names in the same order (a test holds them together).

The library is one Redis Functions library (``FUNCTION LOAD``, ``FCALL``): the coupon hash's
field names as constants (keys.CouponField, RecordField), then lua/lib.lua (the shared
helpers), then every function. Redis runs that text once, when the library loads; a call
runs only its function's body (EVALSHA ran the whole script, helper definitions included,
on every call). The library's name and its functions' names carry a digest of its text, so
two versions of the service can share a Redis while one replaces the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from .keys import BatchCount, BatchField, BucketField, CouponField, KeyPart, LevelField, RecordField

KEYED_KEYS = ("record",)  # a keyed call's last key: its Idempotency-Key record, when it has one
KEYED_ARGS = ("fp", "ttl_ms")  # and its arguments: the request's fingerprint, how long to keep the record


@dataclass(frozen=True)
class Function:
    """One function of the library: lua/<name>.lua's body, called with these names.

    KEYS are ``keys`` (then ``more_keys``, a list), and for a ``keyed`` function its
    Idempotency-Key record when it has one; ARGV are ``args``, then for a keyed function
    ``fp`` and ``ttl_ms`` (empty without a key), then ``more_args`` (a list). Lua gets
    ``numbers`` as numbers. KEYS[1], before all of them, is the slot's guard
    (library.guarded), which the generated locals skip.
    """

    name: str
    keys: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    keyed: bool = False
    more_keys: str = ""
    more_args: str = ""
    numbers: frozenset[str] = frozenset()
    flags: tuple[str, ...] = ()  # Redis's: "no-writes", "allow-oom"
    answers: bool = True  # keyed, its reply is the operation's answer (stored, replayed)
    _slots: dict[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for i, name in enumerate(self.keys):
            self._slots[name] = (0, i)
        for i, name in enumerate(self.args):
            self._slots[name] = (1, i)

    def bind(self, **given: Any) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV of a call, from its values by name (every declared name, once)."""
        if len(given) != len(self.keys) + len(self.args) + bool(self.more_keys) + bool(self.more_args):
            missing = set(self._slots) - set(given)
            raise TypeError(f"{self.name}: missing {sorted(missing)} or unknown names in {sorted(given)}")
        keys = [given[name] for name in self.keys]
        args = [given[name] for name in self.args]
        if self.more_keys:
            keys += given[self.more_keys]
        if self.keyed:  # no Idempotency-Key, until library.Library.run puts one in
            args += UNKEYED
        if self.more_args:
            args += given[self.more_args]
        return keys, args

    def prepare(self, **constants: Any) -> Prepared:
        """The call with ``constants`` bound once (a slot's keys, say): ``.bind()`` then takes
        only the rest, by name, and costs a list copy and a store per name."""
        if self.more_keys or self.more_args:
            raise TypeError(f"{self.name}: a call with more_keys or more_args cannot be prepared")
        unknown = set(constants) - set(self._slots)
        if unknown:
            raise TypeError(f"{self.name}: unknown names {sorted(unknown)}")
        keys = [constants.get(name) for name in self.keys]
        args = [constants.get(name) for name in self.args] + (list(UNKEYED) if self.keyed else [])
        open_keys = tuple((i, name) for i, name in enumerate(self.keys) if name not in constants)
        open_args = tuple((i, name) for i, name in enumerate(self.args) if name not in constants)
        return Prepared(self.name, keys, args, open_keys, open_args)

    def lua_locals(self) -> str:
        """The Lua that names the function's KEYS and ARGV (``keys[1]`` is the guard)."""
        lines = []

        def assign(names: Sequence[str], values: Sequence[str]) -> None:
            if names:
                lines.append(f"local {', '.join(names)} = {', '.join(values)}")

        def value(name: str, table: str, index: int) -> str:
            item = f"{table}[{index}]"
            return f"tonumber({item})" if name in self.numbers else item

        keys, args = list(self.keys), list(self.args)
        assign(keys, [value(n, "keys", i + 2) for i, n in enumerate(keys)])
        assign(args, [value(n, "args", i + 1) for i, n in enumerate(args)])
        if self.more_keys:
            assign([self.more_keys], [f"{{ unpack(keys, {len(keys) + 2}) }}"])
        if self.keyed:
            assign(KEYED_KEYS, [f"keys[{len(keys) + 2}]"])
            assign(KEYED_ARGS, [f"args[{len(args) + 1}]", f"args[{len(args) + 2}]"])
        if self.more_args:
            first = len(args) + 1 + (len(KEYED_ARGS) if self.keyed else 0)
            assign([self.more_args], [f"{{ unpack(args, {first}) }}"])
        return "\n".join(lines) + "\n"

    def documented(self) -> tuple[list[str], list[str]]:
        """The KEYS and ARGV names lua/<name>.lua's header must list, in order."""
        keys = [*self.keys, *([self.more_keys] if self.more_keys else [])]
        args = list(self.args)
        if self.keyed:
            keys += KEYED_KEYS
            args += KEYED_ARGS
        if self.more_args:
            args.append(self.more_args)
        return keys, args


@dataclass(frozen=True)
class Prepared:
    """A function's call with some names bound (Function.prepare)."""

    name: str
    keys: list[Any]
    args: list[Any]
    open_keys: tuple[tuple[int, str], ...]  # (position, name) of each name still to give
    open_args: tuple[tuple[int, str], ...]

    def bind(self, **given: Any) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV of a call, from the names ``prepare`` left open (each once)."""
        if len(given) != len(self.open_keys) + len(self.open_args) or not all(
            name in given for _, name in (*self.open_keys, *self.open_args)
        ):
            expected = sorted(name for _, name in (*self.open_keys, *self.open_args))
            raise TypeError(f"{self.name}: takes {expected}, not {sorted(given)}")
        keys, args = self.keys.copy(), self.args.copy()
        for i, name in self.open_keys:
            keys[i] = given[name]
        for i, name in self.open_args:
            args[i] = given[name]
        return keys, args


UNKEYED = (b"", b"")  # fp and ttl_ms of a keyed function's call without an Idempotency-Key


# The functions, in lua/'s files. Key and argument names are those the Lua body uses; a
# name list is written as one string, space-separated.
def declare(name: str, keys: str = "", args: str = "", numbers: str = "", **rest: Any) -> Function:
    return Function(
        name, keys=tuple(keys.split()), args=tuple(args.split()), numbers=frozenset(numbers.split()), **rest
    )


_GATE_KEYS = "queue alive slots window heard"
_WAKE_ARGS = "wake_prefix max_concurrent rate window_ms keep_ms"
_WAKE_NUMBERS = "max_concurrent rate window_ms"
UPLOAD = declare(
    "upload",
    keys="stats audit_stream claims",
    args="prefix audit_cap upload_id part available_prefix due_prefix owner lease_ms claimed_type slot batch "
    "quota",
    keyed=True,
    more_args="lines",
)
UPLOAD_RECORD = declare(
    "upload_record", keys="record", args="action fp owner ttl_ms lease_ms chunk_size reply"
)
ALLOCATE = declare(
    "allocate",
    keys="available exhausted stats audit_stream held listing draining due",
    args="prefix user ctype audit_cap max_per_user held_prefix tracked_prefix slot hold_ms",
    keyed=True,
    numbers="max_per_user hold_ms",
)
REDEEM = declare(
    "redeem", keys="coupon stats audit_stream", args="user expected code audit_cap slot capping", keyed=True
)
VALIDATE = declare("validate", keys="coupon", args="user expected slot capping", flags=("no-writes",))
SETTLE = declare(
    "settle",
    more_keys="dues",
    args="slot budget audit_cap",
    more_args="types",
    numbers="budget",
    flags=("allow-oom",),  # it frees allocations
)
ROLLBACK = declare(
    "rollback", keys="coupon stats audit_stream", args="user expected code audit_cap slot capping", keyed=True
)
RELEASE = declare(
    "release",
    keys="coupon stats audit_stream",
    args="user expected code audit_cap slot",
    keyed=True,
    flags=("allow-oom",),  # it frees an allocation: it must work when Redis is full
)
USER_COUPONS = declare(
    "user_coupons", more_keys="listings", args="prefix user limit after_ms after_code", numbers="limit"
)
STATS = declare(
    "stats",
    keys="stats",
    args="available_prefix draining_prefix slot audit_cap",
    more_args="types",
    # It settles due holds and starts first, a bounded number: their writes (an audit entry and
    # a listing entry per lapse) are what a full Redis must still take to give usages back.
    flags=("allow-oom",),
)
PURGE = declare(
    "purge",
    keys="stats audit_stream exhausted",
    args="prefix limit audit_cap tracked_prefix available_prefix draining_prefix due_prefix",
    more_args="types",
    numbers="limit",
    flags=("allow-oom",),  # it frees memory
)
MEGADEAL_ENTER = declare(
    "megadeal_enter",
    keys=f"available exhausted stats audit_stream {_GATE_KEYS} counter high_water held listing draining due",
    args="prefix user ctype ticket owner max_concurrent rate window_ms lease_ms max_sleep_ms silent_ms "
    "wake_prefix keep_ms waited_ms max_wait_ms audit_cap max_per_user held_prefix tracked_prefix slot "
    "hold_ms",
    keyed=True,
    numbers=f"{_WAKE_NUMBERS} lease_ms max_sleep_ms silent_ms waited_ms max_wait_ms max_per_user hold_ms",
)
MEGADEAL_LEAVE = declare(
    "megadeal_leave",
    keys=_GATE_KEYS,
    args=f"ticket {_WAKE_ARGS}",
    keyed=True,  # it frees the key of a waiter that leaves unanswered
    answers=False,
    numbers=_WAKE_NUMBERS,
    flags=("allow-oom",),  # it frees a slot
)
MEGADEAL_FORGET = declare(
    "megadeal_forget",
    keys=_GATE_KEYS,
    args=f"max_number {_WAKE_ARGS}",
    more_args="owners",
    numbers=f"max_number {_WAKE_NUMBERS}",
    flags=("allow-oom",),  # it frees places in the queue
)
FAILED_LOOKUP = declare("failed_lookup", keys="bucket", args="rate burst spend", numbers="rate burst spend")
BATCH_OPEN = declare("batch_open", keys="batches record", args="batch ctype source")
BATCH_RULES = declare(
    "batch_rules",
    keys="rules stats counts",
    args="batch new_rules slot main audit_cap",
    more_args="types",
    flags=("allow-oom",),  # a disable must work when Redis is full
)
BATCH_RESERVE = declare("batch_reserve", keys="record", args="delta", numbers="delta")
COUPON_SWITCH = declare(
    "coupon_switch",
    keys="coupon stats audit_stream",
    args="code disable slot audit_cap",
    flags=("allow-oom",),  # a disable must work when Redis is full
)
FEED_TRIM = declare("feed_trim", keys="stream dropped", args="keep bound", numbers="keep bound")
BATCH_TIDY = declare(
    "batch_tidy", keys="codes", args="batch slot start count", numbers="start count", flags=("allow-oom",)
)
EXPORT_PAGE = declare(
    "export_page", keys="codes", args="batch slot start count", numbers="start count", flags=("no-writes",)
)
JOB = declare(
    "job", keys="jobs owners", args="action job owner lease_ms", numbers="lease_ms", flags=("allow-oom",)
)
GENERATE = declare("generate", keys="batches record jobs owners", args="batch job stamp", more_args="fields")
# Pool-low events (levels.py): the levels of the types checked, a crossing audited once.
POOL_LEVEL = declare(
    "pool_level", keys="levels audit_stream", args="audit_cap ticket", more_args="checks", numbers="ticket"
)
WEBHOOK_LEASE = declare(
    "webhook_lease", keys="lease", args="action owner lease_ms", numbers="lease_ms", flags=("allow-oom",)
)
FUNCTIONS = (
    UPLOAD, UPLOAD_RECORD, ALLOCATE, REDEEM, VALIDATE, SETTLE, ROLLBACK, RELEASE, USER_COUPONS, STATS, PURGE,
    MEGADEAL_ENTER, MEGADEAL_LEAVE, MEGADEAL_FORGET, FAILED_LOOKUP, BATCH_OPEN, BATCH_RULES, BATCH_RESERVE,
    COUPON_SWITCH, BATCH_TIDY, EXPORT_PAGE, JOB, GENERATE, FEED_TRIM, POOL_LEVEL, WEBHOOK_LEASE,
)  # fmt: skip


def lua_dir() -> Path:
    """The scripts ship inside the wheel as coupon_pool/lua, and live in lua/ in a checkout."""
    packaged = Path(__file__).parent.parent / "lua"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent.parent / "lua"


def constants() -> str:
    """Lua constants for the fields of a coupon hash (``local F_EXPIRES = 'exp'``...), of an
    Idempotency-Key record (``R_REPLY``...), of a budget of failed lookups (``B_AT``...), the
    parts of a slot's key names (``K_DUE``...), of a batch's record (``A_TYPE``...), of its
    counters in a slot (``N_USED``...) and of the pool-low states (``L_STATE``...)."""
    fields: list[tuple[str, StrEnum]] = [("F", f) for f in CouponField]
    fields += [("R", f) for f in RecordField] + [("B", f) for f in BucketField] + [("K", f) for f in KeyPart]
    fields += [("A", f) for f in BatchField] + [("N", f) for f in BatchCount]
    fields += [("L", f) for f in LevelField]
    return "".join(f"local {kind}_{f.name} = '{f.value}'\n" for kind, f in fields)


@dataclass(frozen=True)
class Library:
    """The library's text, its name in Redis, and each function's name there."""

    source: str
    name: str
    names: dict[str, bytes]  # Function.name -> the name FCALL takes


def build(folder: Path | None = None) -> Library:
    folder = folder or lua_dir()
    parts = [constants(), (folder / "lib.lua").read_text()]
    for fn in FUNCTIONS:
        flags = "".join(f"'{flag}', " for flag in fn.flags)
        body = (folder / f"{fn.name}.lua").read_text()
        parts.append(
            f"redis.register_function{{function_name = '{fn.name}_@V', flags = {{ {flags}}},\n"
            f"callback = function(keys, args)\n{fn.lua_locals()}{body}\nend}}\n"
        )
    text = "\n".join(parts)
    version = hashlib.sha1(text.encode()).hexdigest()[:10]
    name = f"coupon_pool_{version}"
    source = f"#!lua name={name}\n" + text.replace("_@V'", f"_{version}'")
    return Library(source, name, {fn.name: f"{fn.name}_{version}".encode() for fn in FUNCTIONS})
