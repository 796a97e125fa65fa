"""GET /v1/batches/{batch}/coupons: a batch's coupons streamed as JSON Lines or CSV."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from coupon_pool.errors import NotAcceptable
from coupon_pool.http.app import create_app
from coupon_pool.http.export_routes import CSV, JSON_LINES, negotiated
from coupon_pool.pool import exporting
from coupon_pool.pool.keys import CouponField, Keys
from coupon_pool.results import COUPON_COLUMNS, EXPORT_STATE_COLUMNS
from coupon_pool.settings import Settings
from support.factories import coupon_json
from support.live_server import LiveServer
from support.redis_server import RedisServer

STATE = {"allocated", "used", "disabled", "created_at"}


def stored(count: int, prefix: str = "C") -> list[dict[str, Any]]:
    """Coupons as an upload sends them, in every shape an export must give back."""
    coupons = []
    for i in range(count):
        shape = i % 4
        coupons.append(
            coupon_json(
                f"{prefix}{i:05d}",
                type=("FREE", "STANDARD", "MEGADEAL", None)[shape],
                max_usages=3 if shape == 1 else None,
                discount={"kind": "percent", "value": "12.50"} if shape == 2 else None,
                starts_in=600 if shape == 3 else None,
                metadata={"campaign": "spring", "note": 'a "quoted", comma\nline'} if shape == 0 else None,
            )
        )
    return coupons


async def upload(client: httpx.AsyncClient, batch: str, coupons: list[dict[str, Any]]) -> None:
    answer = await client.post("/v1/coupons", json={"batch": batch, "coupons": coupons})
    assert answer.status_code == 201, answer.text


def json_lines(answer: httpx.Response) -> list[dict[str, Any]]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == JSON_LINES
    assert answer.text.endswith("\n")
    return [orjson.loads(line) for line in answer.text.splitlines()]


def csv_rows(answer: httpx.Response) -> list[dict[str, str]]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == f"{CSV}; charset=utf-8"
    reader = csv.DictReader(io.StringIO(answer.text, newline=""))
    assert tuple(reader.fieldnames or ()) == (*COUPON_COLUMNS, *EXPORT_STATE_COLUMNS)
    return list(reader)


def same_moment(a: str, b: str) -> bool:
    return abs((datetime.fromisoformat(a) - datetime.fromisoformat(b)).total_seconds()) < 0.001


async def test_a_batch_is_exported_as_json_lines_with_each_coupon_as_uploaded(
    client: httpx.AsyncClient,
) -> None:
    coupons = stored(40)
    await upload(client, "spring", coupons)
    # Allocated before another batch exists: on a sharded pool the allocation could take any FREE coupon.
    allocated = (await client.post("/v1/allocations", json={"user_id": "u1", "type": "FREE"})).json()
    await upload(client, "autumn", stored(3, prefix="OTHER"))
    await client.post("/v1/redemptions", json={"code": allocated["code"], "user_id": "u1"})
    await client.post("/v1/coupons/C00001/disable")

    rows = {row["code"]: row for row in json_lines(await client.get("/v1/batches/spring/coupons"))}

    assert sorted(rows) == sorted(c["code"] for c in coupons)
    for given in coupons:
        row = rows[given["code"]]
        assert row["type"] == given.get("type", "STANDARD")
        assert row["discount"] == {**given["discount"], "value": given["discount"]["value"]}
        assert row["max_usages"] == given.get("max_usages", 1)
        assert same_moment(row["expires_at"], given["expires_at"])
        assert (row["starts_at"] is None) == ("starts_at" not in given)
        assert row["metadata"] == given.get("metadata", {})
        assert (
            set(row)
            == {"code", "type", "discount", "expires_at", "max_usages", "starts_at", "metadata"} | STATE
        )
    assert (rows[allocated["code"]]["allocated"], rows[allocated["code"]]["used"]) == (1, 1)
    assert [code for code, row in rows.items() if row["disabled"]] == ["C00001"]


async def test_the_csv_export_holds_the_same_coupons_as_the_json_lines_one(client: httpx.AsyncClient) -> None:
    await upload(client, "spring", stored(20))
    by_json = json_lines(await client.get("/v1/batches/spring/coupons"))

    by_csv = csv_rows(await client.get("/v1/batches/spring/coupons?format=csv"))

    assert [row["code"] for row in by_csv] == [row["code"] for row in by_json]
    for cells, row in zip(by_csv, by_json, strict=True):
        assert cells["type"] == row["type"]
        assert (cells["discount_kind"], cells["discount_value"]) == (
            row["discount"]["kind"],
            row["discount"]["value"],
        )
        assert (cells["expires_at"], cells["starts_at"] or None) == (row["expires_at"], row["starts_at"])
        assert orjson.loads(cells["metadata"]) == row["metadata"]
        assert (int(cells["max_usages"]), int(cells["allocated"]), int(cells["used"])) == (
            row["max_usages"], row["allocated"], row["used"],
        )  # fmt: skip
        assert (cells["disabled"], cells["created_at"]) == (str(row["disabled"]).lower(), row["created_at"])


@pytest.mark.parametrize(
    ("query", "accept", "media_type"),
    [
        ("", None, JSON_LINES),
        ("", "text/csv", CSV),
        ("", "application/x-ndjson", JSON_LINES),
        ("", "text/csv;q=0.5, application/jsonl", JSON_LINES),
        ("", "application/json, text/*", CSV),
        ("?format=jsonl", "text/csv", JSON_LINES),  # the query wins over Accept
        ("?format=csv", "application/json", CSV),
    ],
)
async def test_the_format_is_the_querys_else_accepts_else_json_lines(
    client: httpx.AsyncClient, query: str, accept: str | None, media_type: str
) -> None:
    await upload(client, "spring", stored(2))
    headers = {"accept": accept} if accept else {}
    answer = await client.get(f"/v1/batches/spring/coupons{query}", headers=headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"].split(";")[0] == media_type
    assert "content-length" not in answer.headers


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        ([], JSON_LINES),
        ([""], JSON_LINES),
        (["*/*"], JSON_LINES),
        (["text/csv; q=1", "application/x-ndjson; q=0.9"], CSV),
        (["application/x-ndjson;q=0.1,text/csv;q=0.2"], CSV),
        (["TEXT/CSV"], CSV),
        (["application/*;q=0.3, text/csv;q=not-a-number"], JSON_LINES),
    ],
)
def test_accept_chooses_by_its_preference(accept: list[str], chosen: str) -> None:
    assert negotiated(accept) == chosen


@pytest.mark.parametrize("accept", ["application/json", "text/csv;q=0", "image/png, application/xml;q=0.5"])
async def test_an_accept_of_neither_format_is_406(client: httpx.AsyncClient, accept: str) -> None:
    await upload(client, "spring", stored(2))
    answer = await client.get("/v1/batches/spring/coupons", headers={"accept": accept})
    assert answer.status_code == 406
    assert answer.json()["code"] == NotAcceptable.code


async def test_an_unknown_format_is_422_naming_the_parameter(client: httpx.AsyncClient) -> None:
    answer = await client.get("/v1/batches/spring/coupons?format=xml")
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "format"


async def test_an_unknown_batch_is_404(client: httpx.AsyncClient) -> None:
    await upload(client, "spring", stored(2))
    answer = await client.get("/v1/batches/summer/coupons")
    assert answer.status_code == 404
    assert answer.json()["code"] == "batch_not_found"


async def test_expired_coupons_come_only_when_asked_for(client: httpx.AsyncClient, redis: Redis) -> None:
    await upload(client, "spring", [coupon_json("SOON"), coupon_json("GONE")])
    await redis.hset(
        Keys("cp").coupon("GONE"), CouponField.EXPIRES, 1000
    )  # as time would (uploads refuse it)

    assert [row["code"] for row in json_lines(await client.get("/v1/batches/spring/coupons"))] == ["SOON"]
    rows = json_lines(await client.get("/v1/batches/spring/coupons?expired=true"))
    assert [row["code"] for row in rows] == ["SOON", "GONE"]


async def test_a_head_answers_the_headers_only(client: httpx.AsyncClient) -> None:
    await upload(client, "spring", stored(3))
    answer = await client.head("/v1/batches/spring/coupons?format=csv")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith(CSV)
    assert answer.content == b""


async def test_a_client_that_has_gone_stops_the_walk(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export reads no further than the stretch under way when its client has gone."""
    monkeypatch.setattr(exporting, "EXPORT_STRETCH", 5)
    app = create_app(Settings(redis_url=redis_server.url))
    async with Redis.from_url(redis_server.url) as redis:
        await redis.flushall()
    async with app.router.lifespan_context(app):
        transport = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        async with transport as http:
            await upload(http, "spring", stored(100))
        sent: list[dict[str, Any]] = []
        requests = iter([{"type": "http.request", "body": b"", "more_body": False}])

        async def receive() -> dict[str, Any]:
            return next(requests, {"type": "http.disconnect"})

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http", "method": "GET", "path": "/v1/batches/spring/coupons", "raw_path": b"",
            "root_path": "", "query_string": b"", "headers": [], "http_version": "1.1", "scheme": "http",
            "server": ("t", 80), "client": ("c", 1), "asgi": {"version": "3.0"}, "app": app,
        }  # fmt: skip
        await app(scope, receive, send)

    assert sent[0]["status"] == 200
    rows = b"".join(m.get("body", b"") for m in sent[1:]).count(b"\n")
    assert rows < 100 // 2  # a stretch, not the batch


async def test_a_large_export_arrives_in_chunks_over_real_http(redis: Redis, live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as http:
        for part in range(3):
            await upload(http, "big", stored(2000, prefix=f"P{part}-"))
        chunks = 0
        lines = 0
        async with http.stream("GET", "/v1/batches/big/coupons") as answer:
            assert answer.status_code == 200
            assert answer.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in answer.headers
            async for chunk in answer.aiter_raw():
                chunks += 1
                lines += chunk.count(b"\n")
    assert lines == 6000
    assert chunks > 1
