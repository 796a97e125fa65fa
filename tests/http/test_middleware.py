"""The per-request JSON log line and the X-Request-ID header."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import httpx
import orjson
import pytest

from support.factories import coupon_json


async def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    await asyncio.sleep(0)  # lines are written at the end of the event-loop turn
    return [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


async def test_the_log_line_of_a_request_carries_its_request_id(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    await log_lines(capsys)
    response = await client.get("/v1/stats", headers={"X-Request-ID": "trace-42"})

    assert response.headers["x-request-id"] == "trace-42"
    [line] = await log_lines(capsys)
    assert line["request_id"] == "trace-42"
    assert (line["method"], line["path"], line["status"], line["level"]) == ("GET", "/v1/stats", 200, "info")
    assert line["latency_ms"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])


async def test_a_request_without_an_id_gets_one_in_its_response_and_log_line(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    await log_lines(capsys)
    response = await client.get("/healthz")
    [line] = await log_lines(capsys)
    assert re.fullmatch(r"[0-9a-f]{16}-[0-9]+", response.headers["x-request-id"])
    assert line["request_id"] == response.headers["x-request-id"]
    again = await client.get("/healthz")
    assert again.headers["x-request-id"] != response.headers["x-request-id"]


async def test_an_unusable_request_id_is_replaced(client: httpx.AsyncClient) -> None:
    for bad in ("x" * 129, "has space", ""):
        response = await client.get("/healthz", headers={"X-Request-ID": bad})
        assert re.fullmatch(r"[0-9a-f]{16}-[0-9]+", response.headers["x-request-id"])


async def test_the_log_lines_name_each_operations_fields(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    coupons = [coupon_json("L1", type="FREE"), coupon_json("L1")]
    await client.post("/v1/coupons", json={"coupons": coupons})
    await client.post("/v1/allocations", json={"user_id": "ann", "type": "FREE"})
    await client.post("/v1/redemptions", json={"code": "L1", "user_id": "ann"})
    await log_lines(capsys)  # the lines so far, and the fixture's, are not the point below
    await client.post("/v1/coupons", json={"coupons": coupons})
    await client.post("/v1/allocations", json={"user_id": "ann", "type": "FREE"})
    await client.post("/v1/redemptions", json={"code": "L1", "user_id": "ann"})

    upload, allocate, redeem = await log_lines(capsys)
    assert (upload["coupons"], upload["created"], upload["duplicates"]) == (2, 0, 2)
    assert allocate["status"] == 409
    assert {k: allocate[k] for k in ("type", "user_id", "error")} == {
        "type": "FREE", "user_id": "ann", "error": "pool_empty",
    }  # fmt: skip
    assert redeem["status"] == 409
    assert {k: redeem[k] for k in ("code", "user_id", "error")} == {
        "code": "L1", "user_id": "ann", "error": "already_redeemed",
    }  # fmt: skip


async def test_a_successful_operation_logs_its_outcome(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    await client.post("/v1/coupons", json={"coupons": [coupon_json("OK1")]})
    await log_lines(capsys)
    await client.post("/v1/allocations", json={"user_id": "bo"})
    await client.post("/v1/redemptions", json={"code": "OK1", "user_id": "bo"})
    allocate, redeem = await log_lines(capsys)
    assert (allocate["status"], allocate["code"], allocate["type"]) == (201, "OK1", "STANDARD")
    assert (redeem["status"], redeem["type"], redeem["used"]) == (201, "STANDARD", 1)
    assert "error" not in allocate
    assert "error" not in redeem


async def test_a_refused_body_logs_its_error_code(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    await log_lines(capsys)
    await client.post("/v1/allocations", content=b"{", headers={"content-type": "application/json"})
    [line] = await log_lines(capsys)
    assert (line["status"], line["error"]) == (400, "invalid_json")


async def test_a_client_gone_mid_body_is_logged_as_499_not_as_a_server_error(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    await log_lines(capsys)
    app = client._transport.app  # type: ignore[attr-defined]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "path": "/v1/allocations", "raw_path": b"/v1/allocations", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"40")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "scheme": "http",
    }  # fmt: skip
    messages = [{"type": "http.request", "body": b'{"us', "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        pass

    await app(scope, receive, send)  # returns: nothing raised out of the app
    [line] = await log_lines(capsys)
    assert (line["status"], line["level"], line["error"]) == (499, "info", "client_disconnected")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
