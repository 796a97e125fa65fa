"""`coupon-pool export --batch B FILE` against a real service, and its file loaded back by upload."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from coupon_pool.tools.coupon_files import BadItem, Item, read
from coupon_pool.tools.export import DONE, FAILED, USAGE
from support.factories import coupon_json
from support.live_server import LiveServer


def command(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coupon_pool", name, *map(str, args)],
        capture_output=True, text=True, timeout=300, check=False, env=dict(os.environ),
    )  # fmt: skip


def summary(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


def coupons(count: int) -> list[dict[str, Any]]:
    return [
        coupon_json(
            f"E{i:05d}",
            type=("FREE", "STANDARD", "MEGADEAL")[i % 3],
            max_usages=2 if i % 4 == 0 else None,
            starts_in=600 if i % 5 == 0 else None,
            metadata={"campaign": "spring", "text": 'with "quotes", commas\nand a line break'}
            if i % 2
            else None,
        )
        for i in range(count)
    ]


async def uploaded(url: str, batch: str, items: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        answer = await http.post("/v1/coupons", json={"batch": batch, "coupons": items})
        assert answer.status_code == 201, answer.text
        allocated = await http.post("/v1/allocations", json={"user_id": "u1", "type": "FREE"})
        assert allocated.status_code == 201


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
async def test_an_exported_file_uploads_back_with_every_coupon_a_duplicate(
    tmp_path: Path, redis: Redis, live_server: LiveServer, suffix: str
) -> None:
    await uploaded(live_server.url, "spring", coupons(300))
    path = tmp_path / f"spring{suffix}"

    exported = summary(command("export", "--batch", "spring", path, "--url", live_server.url, "--json"))
    loaded = summary(command("upload", path, "--url", live_server.url, "--json", "--quiet"))

    assert (exported["coupons"], exported["format"]) == (300, suffix[1:])
    assert path.stat().st_size == exported["bytes"]
    assert (loaded["coupons"], loaded["created"], loaded["duplicates"]) == (300, 0, 300)
    assert not path.with_name(path.name + ".part").exists()


async def test_the_file_holds_the_coupons_as_upload_reads_them(
    tmp_path: Path, redis: Redis, live_server: LiveServer
) -> None:
    given = coupons(30)
    await uploaded(live_server.url, "spring", given)
    path = tmp_path / "spring.csv"
    assert command("export", "--batch", "spring", path, "--url", live_server.url).returncode == DONE

    items = list(read(path))

    assert not [item for item in items if isinstance(item, BadItem)]
    bodies = [orjson.loads(item.body) for item in items if isinstance(item, Item)]
    assert [b["code"] for b in bodies] == [c["code"] for c in given]
    for body, coupon in zip(bodies, given, strict=True):
        assert body.get("metadata", {}) == coupon.get("metadata", {})
        assert body["max_usages"] == coupon.get("max_usages", 1)
        assert ("starts_at" in body) == ("starts_at" in coupon)


async def test_the_format_option_wins_over_the_files_name_and_progress_is_shown(
    tmp_path: Path, redis: Redis, live_server: LiveServer
) -> None:
    await uploaded(live_server.url, "spring", coupons(10))
    path = tmp_path / "spring.txt"

    done = command("export", "--batch", "spring", path, "--format", "jsonl", "--url", live_server.url,
                   "--progress-every", "0")  # fmt: skip

    assert done.returncode == DONE, done.stderr
    assert [orjson.loads(line)["code"] for line in path.read_text().splitlines()][:2] == ["E00000", "E00001"]
    assert "export: 10/~10 coupons written" in done.stderr
    assert "10 coupons of batch spring written to" in done.stdout


def test_a_file_of_no_known_format_is_refused(tmp_path: Path) -> None:
    done = command("export", "--batch", "spring", tmp_path / "spring.txt")
    assert done.returncode == USAGE
    assert "name it *.jsonl or *.csv, or give --format" in done.stderr


def test_a_bad_batch_id_is_refused(tmp_path: Path) -> None:
    done = command("export", "--batch", "no spaces", tmp_path / "x.csv")
    assert done.returncode == USAGE
    assert "must be 1-64 of" in done.stderr


async def test_an_unknown_batch_fails_and_leaves_no_file(
    tmp_path: Path, redis: Redis, live_server: LiveServer
) -> None:
    path = tmp_path / "summer.csv"
    done = command("export", "--batch", "summer", path, "--url", live_server.url)
    assert done.returncode == FAILED
    assert "404 batch_not_found" in done.stderr
    assert not path.exists()
    assert not path.with_name(path.name + ".part").exists()


def test_state_columns_and_fields_are_read_past_by_upload(tmp_path: Path) -> None:
    csv_file = tmp_path / "state.csv"
    csv_file.write_text(
        "code,discount_kind,discount_value,expires_at,allocated,used,disabled,created_at\r\n"
        "S1,flat,5,2099-01-01T00:00:00Z,2,1,true,2026-01-01T00:00:00Z\r\n"
    )
    lines = tmp_path / "state.jsonl"
    lines.write_text(
        '{"code":"S2","discount":{"kind":"flat","value":"5"},"expires_at":"2099-01-01T00:00:00Z",'
        '"metadata":{"used":"kept"},"allocated":2,"used":1,"disabled":false,"created_at":"2026-01-01T00:00:00Z"}\n'
    )

    (from_csv,), (from_lines,) = list(read(csv_file)), list(read(lines))

    assert isinstance(from_csv, Item)
    assert isinstance(from_lines, Item)
    assert set(orjson.loads(from_csv.body)) == {"code", "discount", "expires_at"}
    assert orjson.loads(from_lines.body) == {
        "code": "S2", "discount": {"kind": "flat", "value": "5"}, "expires_at": "2099-01-01T00:00:00Z",
        "metadata": {"used": "kept"},
    }  # fmt: skip


def test_an_unknown_field_beside_the_state_is_still_refused(tmp_path: Path) -> None:
    lines = tmp_path / "bad.jsonl"
    lines.write_text(
        '{"code":"S2","discount":{"kind":"flat","value":"5"},"expires_at":"2099-01-01T00:00:00Z",'
        '"used":1,"colour":"red"}\n'
    )
    (item,) = list(read(lines))
    assert isinstance(item, BadItem)
    assert item.column == "colour"
