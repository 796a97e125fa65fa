"""`coupon-pool upload FILE...` against a real service: large files, re-runs, refusals."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from coupon_pool.models import MAX_METADATA_KEYS, MAX_METADATA_VALUE
from coupon_pool.pool.codec import to_ms
from coupon_pool.tools.coupon_files import MAX_LINE_BYTES, Item
from coupon_pool.tools.upload import DONE, INVALID_DATA, USAGE, _refusal, idempotency_key
from coupon_pool.tools.upload import main as upload_main
from support.live_server import LiveServer
from support.redis_server import RedisServer

HEADER = ["code", "type", "discount_kind", "discount_value", "expires_at", "max_usages"]
ADMIN_KEY = "upload-admin-key-0123456789"


def write_csv(path: Path, count: int, start: int = 0) -> Path:
    with path.open("w", newline="") as out:
        rows = csv.writer(out)
        rows.writerow(HEADER)
        for i in range(start, start + count):
            kind, value = ("percent", "15") if i % 2 else ("flat", "2.50")
            rows.writerow([f"F{i:07d}", "FREE" if i % 3 == 0 else "", kind, value, "2099-01-01T00:00:00Z",
                           "" if i % 5 else "3"])  # fmt: skip
    return path


def upload(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coupon_pool", "upload", *map(str, args)],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, **(env or {})},
    )  # fmt: skip


def killed_after_first_line(command: list[str]) -> str:
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True) as cut:
        assert cut.stderr is not None
        line = cut.stderr.readline()
        cut.kill()
    return line


def summary(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


async def created(redis: Redis) -> dict[str, str]:
    stats: dict[str, str] = await redis.hgetall("{cp}:stats")
    return {field: value for field, value in stats.items() if field.endswith(":created")}


async def test_a_120000_line_file_is_stored_whole_and_a_second_run_counts_nothing_twice(
    tmp_path: Path, redis: Redis, live_server: LiveServer
) -> None:
    path = write_csv(tmp_path / "coupons.csv", 120_000)

    first = upload(path, "--url", live_server.url, "--json", "--progress-every", "0")
    again = upload(path, "--url", live_server.url, "--json", "--quiet")

    named = summary(first)["batch"]  # after the coupons: both runs join the same batch
    assert named.startswith("f-")
    expected = {
        "coupons": 120_000,
        "created": 120_000,
        "duplicates": 0,
        "files": 1,
        "uploads": 3,
        "batch": named,
    }
    assert {k: v for k, v in summary(first).items() if k != "seconds"} == {
        **expected, "replayed": 0, "created_now": 120_000
    }  # fmt: skip
    # The second run replays each upload's answer (Idempotency-Key): the same figures, said to be replays.
    assert {k: v for k, v in summary(again).items() if k != "seconds"} == {
        **expected, "replayed": 3, "created_now": 0
    }  # fmt: skip
    assert await created(redis) == {"FREE:created": "40000", "STANDARD:created": "80000"}
    assert await redis.hget("{cp}:c:F0000005", "max") == "3"
    assert await redis.hget("{cp}:c:F0000005", "b") == named
    assert await redis.hget("{cp}:bstat:" + named, "created") == "120000"
    # Not a terminal: plain lines, one per upload here (the last one a part: 20,000), and no carriage return.
    lines = first.stderr.splitlines()
    assert "\r" not in first.stderr
    assert lines[0].startswith("upload: 50,000/120,000 coupons sent, 50,000 created, 0 duplicates")
    assert lines[-1].startswith("upload: 120,000/120,000 coupons sent, 120,000 created")
    assert len(lines) == 3


async def test_an_interrupted_upload_completes_on_the_next_run(
    tmp_path: Path, redis: Redis, live_server: LiveServer
) -> None:
    path = write_csv(tmp_path / "coupons.csv", 30_000)
    command = [sys.executable, "-m", "coupon_pool", "upload", str(path), "--url", live_server.url,
               "--batch", "5000", "--progress-every", "0"]  # fmt: skip
    first_line = killed_after_first_line(command)  # the first upload is acknowledged: cut the run short
    assert first_line.startswith("upload: 5,000/30,000")
    assert 5000 <= await redis.zcard("{cp}:avail:STANDARD") + await redis.zcard("{cp}:avail:FREE") < 30_000

    rerun = upload(path, "--url", live_server.url, "--batch", "5000", "--json")

    figures = summary(rerun)
    assert {k: figures[k] for k in ("coupons", "created", "duplicates", "files", "uploads")} == {
        "coupons": 30_000, "created": 30_000, "duplicates": 0, "files": 1, "uploads": 6
    }  # fmt: skip
    assert figures["replayed"] >= 1  # the uploads acknowledged before the cut
    assert figures["created_now"] == 30_000 - 5_000 * figures["replayed"]
    assert await created(redis) == {"FREE:created": "10000", "STANDARD:created": "20000"}


async def test_the_same_coupons_under_another_name_are_said_to_be_replays_of_the_earlier_run(
    tmp_path: Path, redis: Redis, live_server: LiveServer
) -> None:
    first = write_csv(tmp_path / "coupons.csv", 25)
    copy = tmp_path / "renamed.csv"
    copy.write_bytes(first.read_bytes())
    summary(upload(first, "--url", live_server.url, "--json"))

    again = upload(copy, "--url", live_server.url)

    assert again.returncode == 0
    assert again.stdout.startswith(
        "25 coupons from 1 file(s): 25 created, 0 duplicates (already stored), in "
    )
    assert again.stdout.endswith(
        "; 1 of 1 upload(s) had been sent before, by a run of the same coupons: their figures are that "
        "run's, and this run created 0\n"
    )
    assert await created(redis) == {"FREE:created": "9", "STANDARD:created": "16"}  # once


async def test_codes_already_stored_are_reported_by_file_and_line(
    tmp_path: Path, redis: Redis, live_server: LiveServer
) -> None:
    summary(upload(write_csv(tmp_path / "old.csv", 10), "--url", live_server.url, "--json"))
    newer = write_csv(tmp_path / "new.csv", 10, start=8)  # F0000008 and F0000009 are stored

    done = upload(newer, "--url", live_server.url, "--json")

    assert summary(done)["created"] == 8
    assert summary(done)["duplicates"] == 2
    assert f"duplicate: {newer}:2: F0000008" in done.stderr
    assert f"duplicate: {newer}:3: F0000009" in done.stderr


async def test_invalid_lines_are_named_by_file_line_and_column_and_nothing_is_sent(
    tmp_path: Path, redis: Redis, live_server: LiveServer
) -> None:
    path = write_csv(tmp_path / "coupons.csv", 3)
    with path.open("a") as out:
        out.write("BAD1,FREE,flat,0,2099-01-01T00:00:00Z,1\n")
        out.write("BAD2,GOLD,percent,10,2099-01-01T00:00:00Z,x\n")
        out.write("BAD3,FREE\n")
    lines = tmp_path / "more.jsonl"
    lines.write_bytes(
        b'{"code":"J1","discount":{"kind":"flat","value":"1"},"expires_at":"2099-01-01T00:00:00Z"}\n'
        b'{"code":"J2","code":"J3","discount":{"kind":"flat","value":"1"},"expires_at":"2099-01-01T00:00:00Z"}\n'
    )

    done = upload(path, lines, "--url", live_server.url)

    assert done.returncode == INVALID_DATA
    assert done.stderr.splitlines() == [
        f"{path}:5: discount_value: must be greater than 0, with at most 12 digits before the point "
        "and 4 after",
        f"{path}:6: type: Input should be 'FREE', 'STANDARD' or 'MEGADEAL' "
        "(and 1 more problem(s) on this line)",
        f"{path}:7: (line): has 2 cells; the header names 6 columns",
        f"{lines}:2: code: appears more than once in the same object: send it once",
        "upload: 4 invalid line(s); nothing was sent",
    ]
    assert await created(redis) == {}


@pytest.mark.parametrize("digits", [20, 5000])  # past 64 bits; past Python's 4,300 digits to an int
def test_a_max_usages_of_many_digits_is_named_by_line_and_column(tmp_path: Path, digits: int) -> None:
    path = tmp_path / "coupons.csv"
    path.write_text(f"code,discount_kind,discount_value,expires_at,max_usages\n"
                    f"A,flat,1,2099-01-01T00:00:00Z,{'9' * digits}\n")  # fmt: skip

    done = upload(path, "--dry-run")

    assert done.returncode == INVALID_DATA
    assert done.stderr.splitlines() == [
        f"{path}:2: max_usages: Input should be less than or equal to 1000000",
        "upload: 1 invalid line(s); nothing was sent",
    ]


CSV_HEADER = "code,discount_kind,discount_value,expires_at,max_usages"


def padded_line(suffix: str, code: str, size: int, end: str = "\n") -> str:
    """A valid coupon on a line of ``size`` bytes (its line break aside): JSON padded with
    spaces, CSV with leading zeros in max_usages."""
    if suffix == "jsonl":
        line = orjson.dumps({"code": code, "discount": {"kind": "flat", "value": "1"},
                             "expires_at": "2099-01-01T00:00:00Z"}).decode()  # fmt: skip
        return line[:-1] + " " * (size - len(line)) + "}" + end
    line = f"{code},flat,1,2099-01-01T00:00:00Z,3"
    return line[:-1] + "0" * (size - len(line)) + "3" + end


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_line_over_max_line_bytes_is_refused_by_its_number(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"coupons.{suffix}"
    with path.open("w", newline="") as out:
        out.write(f"{CSV_HEADER}\n" if suffix == "csv" else "")
        out.write(padded_line(suffix, "SHORT", 100))
        out.write(padded_line(suffix, "LONG", MAX_LINE_BYTES + 200))  # valid, were it shorter
        out.write(padded_line(suffix, "EDGE", MAX_LINE_BYTES + 1, end="\r\n"))
        out.write(padded_line(suffix, "LAST", MAX_LINE_BYTES + 900, end=""))
    first_long = 3 if suffix == "csv" else 2

    done = upload(path, "--dry-run")

    assert done.returncode == INVALID_DATA
    assert done.stderr.splitlines() == [
        f"{path}:{first_long}: (line): longer than {MAX_LINE_BYTES} bytes",
        f"{path}:{first_long + 1}: (line): longer than {MAX_LINE_BYTES} bytes",
        f"{path}:{first_long + 2}: (line): longer than {MAX_LINE_BYTES} bytes",
        "upload: 3 invalid line(s); nothing was sent",
    ]


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
async def test_a_line_of_max_line_bytes_exactly_is_stored(
    tmp_path: Path, redis: Redis, live_server: LiveServer, suffix: str
) -> None:
    path = tmp_path / f"coupons.{suffix}"
    with path.open("w", newline="") as out:
        out.write(f"{CSV_HEADER}\r\n" if suffix == "csv" else "")
        out.write(padded_line(suffix, "FULL", MAX_LINE_BYTES, end="\r\n"))
        out.write(padded_line(suffix, "ATEND", MAX_LINE_BYTES, end=""))

    done = upload(path, "--url", live_server.url, "--json")

    assert summary(done)["created"] == 2
    assert await redis.exists("{cp}:c:FULL", "{cp}:c:ATEND") == 2


def test_a_max_usages_of_more_digits_than_a_line_holds_makes_the_line_too_long(tmp_path: Path) -> None:
    path = tmp_path / "coupons.csv"
    path.write_text(f"{CSV_HEADER}\nA,flat,1,2099-01-01T00:00:00Z,{'9' * MAX_LINE_BYTES}\n")

    done = upload(path, "--dry-run")

    assert done.returncode == INVALID_DATA
    assert done.stderr.splitlines()[0] == f"{path}:2: (line): longer than {MAX_LINE_BYTES} bytes"


async def test_starts_at_and_metadata_are_stored_from_csv_cells_and_json_lines_fields(
    tmp_path: Path, redis: Redis, live_server: LiveServer
) -> None:
    table = tmp_path / "coupons.csv"
    table.write_text(
        "code,discount_kind,discount_value,expires_at,starts_at,metadata\n"
        "LATER,flat,1,2099-01-01T00:00:00Z,2098-06-01T12:00:00Z,"
        '"{""campaign"": ""spring"", ""tier"": ""gold""}"\n'
        "NOW,flat,1,2099-01-01T00:00:00Z, , \n"  # blank cells: no start, no metadata
    )
    lines = tmp_path / "coupons.jsonl"
    lines.write_text(
        '{"code": "JLATER", "discount": {"kind": "percent", "value": "5"}, '
        '"expires_at": "2099-01-01T00:00:00Z", '
        '"starts_at": "2098-06-01T14:00:00+02:00", "metadata": {"note": "caf\u00e9 \u2615", "a.b-c_d": ""}}\n'
    )

    done = upload(table, lines, "--url", live_server.url, "--json")

    assert summary(done)["created"] == 3
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        later, now, jlater = [
            (await http.get(f"/v1/coupons/{code}")).json() for code in ("LATER", "NOW", "JLATER")
        ]
    assert (later["starts_at"], later["scheduled"]) == ("2098-06-01T12:00:00Z", True)
    assert later["metadata"] == {"campaign": "spring", "tier": "gold"}
    assert (now["starts_at"], now["scheduled"], now["metadata"]) == (None, False, {})
    assert (jlater["starts_at"], jlater["scheduled"]) == ("2098-06-01T12:00:00Z", True)
    assert jlater["metadata"] == {"note": "caf\u00e9 \u2615", "a.b-c_d": ""}
    # Scheduled: in the type's timers at its start, in no available set until then.
    start_ms = to_ms(datetime(2098, 6, 1, 12, tzinfo=UTC))
    assert await redis.zrange("{cp}:due:STANDARD", 0, -1, withscores=True) == [
        ("JLATER", start_ms),
        ("LATER", start_ms),
    ]
    assert await redis.zrange("{cp}:avail:STANDARD", 0, -1) == ["NOW"]


@pytest.mark.parametrize(
    ("cell", "problem"),
    [
        (
            json.dumps({f"k{i}": "v" for i in range(MAX_METADATA_KEYS + 1)}),
            "Dictionary should have at most 50 items after validation, not more",
        ),
        ('{"two words": "v"}', "key 'two words': String should match pattern '^[A-Za-z0-9_.-]{1,40}$'"),
        ('{"%s": "v"}' % ("k" * 41), f"key '{'k' * 41}': String should match pattern"),
        (
            json.dumps({"k": "v" * (MAX_METADATA_VALUE + 1)}),
            "the value of 'k': String should have at most 500",
        ),
        ('{"k": 5}', "the value of 'k': Input should be a valid string"),
        ("spring", 'must be a JSON object such as {"campaign": "spring"}: expected value at line 1 column 1'),
        ('["spring"]', 'must be a JSON object such as {"campaign": "spring"}, not an array'),
        ('"spring"', 'must be a JSON object such as {"campaign": "spring"}, not a string'),
        ("12", 'must be a JSON object such as {"campaign": "spring"}, not a number'),
        ('{"k": "v"', 'must be a JSON object such as {"campaign": "spring"}: EOF while parsing an object'),
        (
            '{"k": "a", "k": "b"}',
            'must be a JSON object such as {"campaign": "spring"}: Detected duplicate key "k"',
        ),
        ('{"k": 1' + "0" * 30 + "}", "the value of 'k': Input should be a valid string"),  # past 64 bits
    ],
    ids=[
        "51-keys",
        "space",
        "long-key",
        "long-value",
        "number",
        "text",
        "array",
        "string",
        "bare-number",
        "cut",
        "twice",
        "huge-number",
    ],
)
def test_a_bad_metadata_cell_is_named_by_file_line_and_column(
    tmp_path: Path, cell: str, problem: str
) -> None:
    path = tmp_path / "coupons.csv"
    with path.open("w", newline="") as out:
        rows = csv.writer(out)
        rows.writerow(["code", "discount_kind", "discount_value", "expires_at", "metadata"])
        rows.writerow(["GOOD", "flat", "1", "2099-01-01T00:00:00Z", '{"k": "v"}'])
        rows.writerow(["BAD", "flat", "1", "2099-01-01T00:00:00Z", cell])

    done = upload(path, "--dry-run")

    assert done.returncode == INVALID_DATA
    first, last = done.stderr.splitlines()
    assert first.startswith(f"{path}:3: metadata: {problem}")
    assert last == "upload: 1 invalid line(s); nothing was sent"


def test_bad_metadata_and_starts_at_fields_are_named_by_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "coupons.jsonl"
    coupon = {"code": "J", "discount": {"kind": "flat", "value": "1"}, "expires_at": "2099-01-01T00:00:00Z"}
    path.write_text("\n".join(json.dumps({**coupon, **fields}) for fields in [
        {"metadata": {f"k{i}": "v" for i in range(MAX_METADATA_KEYS + 1)}},
        {"metadata": {"two words": "v"}},
        {"metadata": {"k": "v" * (MAX_METADATA_VALUE + 1)}},
        {"metadata": "spring"},
        {"starts_at": "2099-01-01T00:00:00Z"},
        {"starts_at": "2030-01-01T00:00:00"},
        {"starts_at": "1969-12-31T23:59:59Z"},
        {"metadata": {"k": "v"}, "starts_at": "2030-01-01T00:00:00Z"},
    ]) + "\n")  # fmt: skip

    done = upload(path, "--dry-run")

    assert done.returncode == INVALID_DATA
    assert done.stderr.splitlines() == [
        f"{path}:1: metadata: Dictionary should have at most 50 items after validation, not more",
        f"{path}:2: metadata.two words.[key]: String should match pattern '^[A-Za-z0-9_.-]{{1,40}}$'",
        f"{path}:3: metadata.k: String should have at most 500 characters",
        f"{path}:4: metadata: Input should be an object",
        f"{path}:5: starts_at: must be before expires_at",
        f"{path}:6: starts_at: Input should have timezone info",
        f"{path}:7: starts_at: must be after 1970-01-01T00:00:00Z (in UTC)",
        "upload: 7 invalid line(s); nothing was sent",
    ]


def largest_metadata() -> dict[str, str]:
    """Metadata as large as the service takes: every key and value at its longest, of
    characters JSON writes as the longest escapes (orjson.dumps leaves them as UTF-8)."""
    return {f"{i:02d}".ljust(40, "k"): "\U0001f600" * MAX_METADATA_VALUE for i in range(MAX_METADATA_KEYS)}


def escaped(value: object) -> str:
    """JSON with every character past ASCII as an escape (a surrogate pair past the BMP), and
    every key character too: the longest way to write ``value``."""
    text = json.dumps(value)  # ensure_ascii: "\ud83d\ude00"
    return re.sub(
        r'"([A-Za-z0-9_.-]+)":', lambda m: '"' + "".join(f"\\u{ord(c):04x}" for c in m[1]) + '":', text
    )


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_coupon_with_the_largest_metadata_written_the_longest_way_fits_on_a_line(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"coupons.{suffix}"
    metadata = escaped(largest_metadata())
    if suffix == "jsonl":
        path.write_text(f'{{"code": "BIG", "discount": {{"kind": "flat", "value": "1"}}, '
                        f'"expires_at": "2099-01-01T00:00:00Z", "metadata": {metadata}}}\n')  # fmt: skip
    else:
        cell = '"' + metadata.replace('"', '""') + '"'
        path.write_text(f"code,discount_kind,discount_value,expires_at,metadata\n"
                        f"BIG,flat,1,2099-01-01T00:00:00Z,{cell}\n")  # fmt: skip
    assert 0.99 * MAX_LINE_BYTES < len(path.read_text().splitlines()[-1]) <= MAX_LINE_BYTES

    done = upload(path, "--dry-run", "--json")

    assert summary(done) == {"valid": 1, "files": 1}


def test_a_header_with_an_unknown_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "coupons.csv"
    path.write_text("code,discount,expires_at\nA,1,2099-01-01T00:00:00Z\n")

    done = upload(path, "--dry-run")

    assert done.returncode == INVALID_DATA
    assert "coupons.csv:1: (header): unknown column 'discount'" in done.stderr


def test_a_dry_run_validates_without_a_service(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "coupons.csv", 1000)

    done = upload(path, "--dry-run", "--json", "--url", "http://127.0.0.1:9")

    assert summary(done) == {"valid": 1000, "files": 1}


def test_an_unreachable_service_fails_with_exit_1_after_its_retries(tmp_path: Path) -> None:
    done = upload(write_csv(tmp_path / "c.csv", 10), "--url", "http://127.0.0.1:9", "--retries", "1")

    assert done.returncode == 1
    assert "upload: ConnectionRefusedError: [Errno 111] Connection refused; trying again in 1s" in done.stderr
    assert "did not take an upload after 2 tries: ConnectionRefusedError" in done.stderr
    assert "Run the same command again" in done.stderr


@contextmanager
def stub_service(on_upload: Callable[[], int | None]) -> Iterator[str]:
    """A stand-in for the service that calls ``on_upload`` as each upload arrives, then
    answers the status it returns (with Retry-After), or else that all the upload's coupons
    were created: for what a real service cannot be timed to do."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the service

        def do_POST(self) -> None:
            coupons = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))["coupons"]
            status = on_upload() or 201
            answer = orjson.dumps({"created": len(coupons), "duplicates": []} if status == 201 else {})
            self.send_response(status)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_file_gone_after_validation_is_named_and_exits_2(tmp_path: Path) -> None:
    first = write_csv(tmp_path / "first.csv", 10)
    second = write_csv(tmp_path / "second.csv", 10, start=10)

    with stub_service(lambda: second.unlink(missing_ok=True)) as url:  # as the first uploads
        done = upload(first, second, "--url", url)

    assert done.returncode == USAGE
    assert done.stderr.splitlines()[-1] == (
        f"coupon-pool upload: {second}: cannot be read: No such file or directory; the 10 coupons sent "
        "before it are stored: run the same command again once it can be read"
    )
    assert "Traceback" not in done.stderr


class Terminal(io.StringIO):
    """A terminal for stdout and stderr alike, as a shell shows them."""

    def isatty(self) -> bool:
        return True


async def test_on_a_terminal_the_summary_starts_on_a_line_of_its_own(
    tmp_path: Path, redis: Redis, live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_csv(tmp_path / "coupons.csv", 300)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)

    assert upload_main([str(path), "--url", live_server.url]) == DONE  # one upload: one draw, then last

    bar, summary_line, end = terminal.getvalue().split("\n")
    assert bar.split("\r")[-1].startswith("[########################] 300/300 coupons sent")
    assert summary_line.startswith("300 coupons from 1 file(s): 300 created, 0 duplicates")
    assert end == ""


def test_on_a_terminal_a_retry_is_announced_on_a_line_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_csv(tmp_path / "coupons.csv", 10)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    answers = iter([None, 503])  # the second upload is refused once, then taken

    with stub_service(lambda: next(answers, None)) as url:
        assert upload_main([str(path), "--url", url, "--batch", "5"]) == DONE

    lines = terminal.getvalue().split("\n")
    assert lines[0].startswith("\r[############            ] 5/10 coupons sent")
    assert lines[1] == "upload: 503 ; trying again in 0s"
    assert lines[2].startswith("\r[########################] 10/10 coupons sent")


@pytest.fixture(scope="module")
def keyed_server(redis_server: RedisServer) -> Iterator[LiveServer]:
    server = LiveServer(redis_server.url, COUPON_POOL_ADMIN_KEYS=ADMIN_KEY)
    yield server
    server.stop()


async def test_the_admin_key_comes_from_the_environment(
    tmp_path: Path, redis: Redis, keyed_server: LiveServer
) -> None:
    path = write_csv(tmp_path / "coupons.csv", 10)

    refused = upload(path, "--url", keyed_server.url, "--quiet")
    taken = upload(
        path, "--json", env={"COUPON_POOL_ADMIN_KEY": ADMIN_KEY, "COUPON_POOL_URL": keyed_server.url}
    )

    assert refused.returncode == 1
    assert "401 unauthenticated" in refused.stderr
    assert summary(taken)["created"] == 10


def test_an_upload_over_the_services_body_limit_says_to_send_smaller_ones(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    small = LiveServer(redis_server.url, MAX_BODY_BYTES="100000")
    try:
        path = write_csv(tmp_path / "coupons.csv", 2000)  # about 250 kB as one upload
        refused = upload(path, "--url", small.url, "--quiet")
        taken = upload(path, "--url", small.url, "--quiet", "--json", "--batch", "500")
    finally:
        small.stop()

    assert refused.returncode == 1
    assert "413 body_too_large" in refused.stderr
    assert "(send smaller uploads: --batch)" in refused.stderr
    assert summary(taken)["coupons"] == 2000


def test_a_refusal_by_the_service_names_the_file_and_line_of_each_item() -> None:
    batch = [Item("a.csv", 2, b"{}"), Item("a.csv", 3, b"{}"), Item("b.jsonl", 1, b"{}")]
    answer = {"code": "validation_error", "errors": [
        {"index": 2, "field": "expires_at", "message": "must be in the future"},
    ]}  # fmt: skip

    assert _refusal(batch, answer).endswith("\n  b.jsonl:1: expires_at: must be in the future")


def test_an_upload_keeps_its_key_across_runs_and_positions_tell_equal_uploads_apart() -> None:
    body = b'{"coupons":[]}'
    assert idempotency_key(body, 0) == idempotency_key(body, 0)
    assert idempotency_key(body, 0) != idempotency_key(body, 1)
    assert len(idempotency_key(body, 10**9)) <= 255


@pytest.mark.parametrize("seconds", ["-1", "nan", "3601"])
def test_progress_every_is_a_number_of_seconds_up_to_an_hour(tmp_path: Path, seconds: str) -> None:
    done = upload(write_csv(tmp_path / "c.csv", 1), "--dry-run", "--progress-every", seconds)

    assert done.returncode == USAGE
    assert "--progress-every: must be a number of seconds from 0 to 3600" in done.stderr


async def test_the_batch_id_may_be_named_and_a_bad_one_is_refused(
    tmp_path: Path, redis: Redis, live_server: LiveServer
) -> None:
    path = write_csv(tmp_path / "coupons.csv", 10)
    named = upload(path, "--url", live_server.url, "--json", "--quiet", "--batch-id", "spring.2027")
    assert summary(named)["batch"] == "spring.2027"
    assert await redis.hget("{cp}:bstat:spring.2027", "created") == "10"
    refused = upload(path, "--url", live_server.url, "--batch-id", "no spaces")
    assert refused.returncode == 2
    assert "--batch-id: must be 1-64 of A-Z a-z 0-9 _ . -" in refused.stderr
