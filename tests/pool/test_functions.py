"""The function library: each function's KEYS and ARGV declared once (functions.py), its
file's header documenting the same names, and the library loaded as Redis Functions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from redis.asyncio import Redis

from coupon_pool.models import CouponType
from coupon_pool.pool.functions import FUNCTIONS, Function, Library, build, lua_dir
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.library import LIBRARY
from coupon_pool.pool.store import Store
from support.factories import coupon

_LISTED = re.compile(r"^-- (KEYS|ARGV): |^--       ")


def documented(fn: Function) -> tuple[list[str], list[str]]:
    """The names lua/<name>.lua's header lists under KEYS and under ARGV, in order."""
    found: dict[str, list[str]] = {"KEYS": [], "ARGV": []}
    part = ""
    for line in (lua_dir() / f"{fn.name}.lua").read_text().splitlines():
        if not line.startswith("--"):
            break
        marker = re.match(r"^-- (KEYS|ARGV): ", line)
        if marker:
            part = marker.group(1)
        elif not line.startswith("--       ") or line == "--":
            part = "" if not line.startswith("--       ") else part
        if not part or not _LISTED.match(line) or line[9:10] == " ":
            continue  # not a list, or a description's continuation
        names = line[9:].split("  ", 1)[0]
        found[part] += [name.strip() for name in names.split(",")]
    return found["KEYS"], found["ARGV"]


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda fn: fn.name)
def test_each_file_documents_the_names_its_declaration_gives(fn: Function) -> None:
    assert documented(fn) == fn.documented()


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda fn: fn.name)
def test_a_body_reads_no_keys_or_argv_by_position(fn: Function) -> None:
    body = "\n".join(
        line for line in (lua_dir() / f"{fn.name}.lua").read_text().splitlines() if not line.startswith("--")
    )
    assert not re.search(r"\b(KEYS|ARGV)\b", body)


def test_a_call_is_bound_by_name_in_the_declared_order() -> None:
    fn = Function("f", keys=("a", "b"), args=("x", "y"), keyed=True, more_args="rest")
    assert fn.bind(b="B", a="A", y=2, x=1, rest=["r1", "r2"]) == (["A", "B"], [1, 2, b"", b"", "r1", "r2"])
    with pytest.raises(TypeError, match="missing"):
        fn.bind(a="A", b="B", x=1, rest=[])


def test_the_lua_names_skip_the_guard_and_place_the_keyed_arguments() -> None:
    fn = Function("f", keys=("a",), args=("x", "n"), keyed=True, more_args="rest", numbers=frozenset({"n"}))
    assert fn.lua_locals().splitlines() == [
        "local a = keys[2]",
        "local x, n = args[1], tonumber(args[2])",
        "local record = keys[3]",
        "local fp, ttl_ms = args[3], args[4]",
        "local rest = { unpack(args, 5) }",
    ]


def another_version(folder: Path) -> Library:
    """The library of a copy of lua/ with one comment more: another version's."""
    folder.mkdir()
    for path in lua_dir().glob("*.lua"):
        (folder / path.name).write_text(path.read_text())
    assert build(folder).name == LIBRARY.name
    (folder / "stats.lua").write_text((folder / "stats.lua").read_text() + "\n-- changed\n")
    return build(folder)


def test_the_library_name_changes_with_its_text(tmp_path: Path) -> None:
    changed = another_version(tmp_path / "lua")
    assert changed.name != LIBRARY.name
    assert changed.names["allocate"] != LIBRARY.names["allocate"]


async def test_two_versions_serve_side_by_side_during_an_upgrade(redis: Redis, tmp_path: Path) -> None:
    old = another_version(tmp_path / "lua")
    await redis.function_load(old.source)
    store = Store(redis, Keys("cp"))
    await store.prepare()  # loads this version's beside the old one
    await store.upload([coupon("C1", max_usages=3)])
    assert (await store.allocate("alice", CouponType.STANDARD)).code == "C1"
    listed = {dict(zip(x[::2], x[1::2], strict=True))["library_name"] for x in await redis.function_list()}
    assert {old.name, LIBRARY.name} <= listed
    # The old version's processes still call theirs, on the same data.
    stats = await redis.fcall(
        old.names["stats"].decode(),
        2,
        "{cp}:guard",
        "{cp}:stats",
        "{cp}:avail:",
        "{cp}:draining:",
        "STANDARD",
    )
    assert dict(zip(stats[::2], stats[1::2], strict=True))["STANDARD:allocated"] == "1"


async def test_redis_lists_the_library_with_every_function(redis: Redis) -> None:
    await redis.function_load(LIBRARY.source, replace=True)
    [library] = await redis.function_list(library=LIBRARY.name)
    functions = dict(zip(library[::2], library[1::2], strict=True))["functions"]
    listed = {dict(zip(f[::2], f[1::2], strict=True))["name"] for f in functions}
    assert listed == {name.decode() for name in LIBRARY.names.values()}


@pytest.mark.parametrize(
    "fn", [f for f in FUNCTIONS if not (f.more_keys or f.more_args)], ids=lambda f: f.name
)
def test_a_prepared_call_binds_as_the_function_does(fn: Function) -> None:
    """Names bound once (prepare) and the rest per call (bind) make the same KEYS and ARGV as
    every name given at once, whichever names are bound first."""
    names = [*fn.keys, *fn.args]
    values = {name: f"value-of-{name}" for name in names}
    for split in range(len(names) + 1):
        constants = {name: values[name] for name in names[:split]}
        rest = {name: values[name] for name in names[split:]}
        assert fn.prepare(**constants).bind(**rest) == fn.bind(**values)
    prepared = fn.prepare(**{name: values[name] for name in names[:-1]})
    keys, _ = prepared.bind(**{names[-1]: "x"})
    keys.append("changed")  # each call gets lists of its own
    assert prepared.bind(**{names[-1]: "x"}) == fn.bind(**{**values, names[-1]: "x"})
    with pytest.raises(TypeError):
        prepared.bind()
    with pytest.raises(TypeError):  # as many names as it takes, but not its own
        prepared.bind(no_such_name="x")
    with pytest.raises(TypeError):
        fn.prepare(no_such_name=1)
