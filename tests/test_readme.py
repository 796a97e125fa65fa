"""README's curl examples, run as written against a live server on an empty pool: each must
answer what README shows, the answer under it (`# -> 201 {...}`) and its route's row of the
route table (the success status, and the fields it names). Parsed from README.md, so the
README cannot drift from the service."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from redis.asyncio import Redis

from support.live_server import LiveServer

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
README_URL = "localhost:8080"


@dataclass
class Example:
    command: str  # as README writes it
    method: str = "GET"
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    shown: str = ""  # the answer README shows under it: "201 {...}", or ""


def examples() -> list[Example]:
    """The curl commands of README's sh blocks, in order, each with the answer shown under it."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.DOTALL):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].startswith("curl "):
                i += 1
                continue
            command = lines[i]
            while unfinished(command):
                i += 1
                command += "\n" + lines[i]
            example = parsed(command)
            i += 1
            if i < len(lines) and lines[i].startswith("# -> "):
                shown = [lines[i].removeprefix("# -> ")]
                while i + 1 < len(lines) and lines[i + 1].startswith("#  "):
                    i += 1
                    shown.append(lines[i].removeprefix("#").strip())
                example.shown = "".join(shown)
            found.append(example)
    return found


def unfinished(command: str) -> bool:
    if command.endswith("\\"):
        return True
    try:
        shlex.split(command, comments=True)
    except ValueError:  # a quotation still open: it goes on on the next line
        return True
    return False


def parsed(command: str) -> Example:
    example = Example(command)
    words = iter(shlex.split(command.replace("\\\n", " "), comments=True)[1:])
    for word in words:
        if word == "-s":
            continue
        if word == "-H":
            name, _, value = next(words).partition(":")
            example.headers[name] = value.strip()
        elif word == "-d":
            example.body, example.method = next(words).encode(), "POST"
        elif word == "-X":
            example.method = next(words)
        else:
            assert word.startswith(README_URL), f"a curl option this test does not know: {word}"
            example.path = word.removeprefix(README_URL)
    return example


def route_rows() -> list[tuple[list[tuple[str, re.Pattern[str]]], str]]:
    """README's route table: per row, its routes (method, path pattern) and its success cell."""
    table = README[README.index("| route | success |") :].split("\n\n")[0].splitlines()[2:]
    rows = []
    for row in table:
        cells = row.split(" | ")
        routes = [
            (method, re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path))))
            for method, path in re.findall(r"`(GET|POST|PATCH) (/[^`?]*)", cells[0])
        ]
        rows.append((routes, cells[1]))
    return rows


def top_level_names(group: str) -> set[str]:
    """The names of a brace group as README writes one: `{a, b: {c}, "d": "x"}` -> a, b, d."""
    parts, depth, part = [], 0, ""
    for char in group[1:-1]:
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 0:
            parts, part = [*parts, part], ""
        else:
            part += char
    return {p.split(":")[0].strip().strip('"') for p in [*parts, part] if p.strip()}


def brace_groups(cell: str) -> list[str]:
    groups, depth, start = [], 0, 0
    for i, char in enumerate(cell):
        if char == "{":
            start = i if depth == 0 else start
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                groups.append(cell[start : i + 1])
    return groups


def keys_of(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_of(v)}
    return set()


def assert_shaped_like(got: Any, shown: Any, where: str = "") -> None:
    """Equal, but for times the request itself makes (allocated_at, redeemed_at...): a time."""
    if isinstance(shown, dict):
        assert isinstance(got, dict), (where, got, shown)
        assert set(got) == set(shown), (where, got, shown)
        for name, value in shown.items():
            if name.endswith("_at") and name != "expires_at" and value is not None:
                assert datetime.fromisoformat(got[name]).tzinfo is not None, (where, name, got[name])
            else:
                assert_shaped_like(got[name], value, f"{where}.{name}")
    elif isinstance(shown, list):
        assert isinstance(got, list), (where, got, shown)
        assert len(got) == len(shown), (where, got, shown)
        for g, s in zip(got, shown, strict=True):
            assert_shaped_like(g, s, where)
    else:
        assert got == shown, (where, got, shown)


def test_readme_has_the_examples_this_test_runs() -> None:
    found = examples()
    assert [(e.method, e.path.split("?")[0]) for e in found[:3]] == [
        ("POST", "/v1/coupons"), ("POST", "/v1/allocations"), ("POST", "/v1/redemptions")
    ]  # fmt: skip
    assert len(found) >= 11
    assert all(e.shown for e in found[:3])


async def test_every_curl_example_in_readme_answers_what_readme_shows(
    live_server: LiveServer, redis: Redis
) -> None:
    rows = route_rows()
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        for example in examples():
            answer = await http.request(example.method, example.path, headers=example.headers,
                                        content=example.body)  # fmt: skip
            where = example.command.splitlines()[0]
            if example.shown:
                status, _, shown = example.shown.partition(" ")
                assert answer.status_code == int(status), (where, answer.text)
                assert_shaped_like(answer.json(), httpx.Response(200, content=shown).json(), where)
            path = urlsplit(example.path).path
            matches = [
                (routes, cell)
                for routes, cell in rows
                if any(m == example.method and p.fullmatch(path) for m, p in routes)
            ]  # fmt: skip
            assert len(matches) == 1, (where, "its route has one row in the route table")
            routes, cell = matches[0]
            assert answer.status_code == int(cell.split()[0]), (where, answer.status_code, cell)
            if not answer.headers["content-type"].startswith("application/json"):
                assert "text" in cell, (where, "README says what the answer is")
                continue
            got, groups = answer.json(), brace_groups(cell)
            if groups:  # one group per route of the row, in order
                index = [p.fullmatch(path) is not None for _, p in routes].index(True)
                group = groups[index] if len(groups) == len(routes) else groups[0]
                assert top_level_names(group) == set(got), (where, group, sorted(got))
            else:  # named in backquotes: `user_id`, `allocated_at`...
                named = set(re.findall(r"`([a-z_]+)`", cell))
                assert named, (where, "README names the answer's fields")
                assert named <= keys_of(got), (where, named - keys_of(got))
