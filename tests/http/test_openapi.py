"""The OpenAPI document holds: schemathesis generates requests from /openapi.json and checks every answer.

Valid and invalid bodies, parameters and headers for every route, with and without an API
key, against a real server with keys configured: no 5xx, every status and body as the
document says, invalid input refused, missing auth refused. Bounded for CI by
--max-examples and a fixed seed (a failure names the seed and the case to replay).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from coupon_pool.http.openapi import openapi_document
from coupon_pool.http.routes import OPERATIONS
from support import REPO
from support.live_server import LiveServer
from support.redis_server import RedisServer

ADMIN_KEY = "schemathesis-admin-key-0123456789"
CLIENT_KEY = "schemathesis-client-key-0123456789"
CONFIG = Path(__file__).with_name("schemathesis.toml")
HOOKS = REPO / "support" / "schemathesis_hooks.py"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def test_every_answer_matches_the_openapi_document(
    redis_server: RedisServer, redis: Redis, tmp_path: Path
) -> None:
    server = LiveServer(
        redis_server.url,
        COUPON_POOL_ADMIN_KEYS=ADMIN_KEY,
        COUPON_POOL_CLIENT_KEYS=CLIENT_KEY,
        MEGADEAL_RATE_PER_S="1000",  # generated MEGADEAL allocations must not queue for seconds
    )
    try:
        # Without the Idempotency-Key parameter: its rule (a key names one request; sent with
        # another body it is a documented 422) is one JSON Schema cannot state, and generated
        # keys repeat. tests/http/test_idempotency.py tests the header, its replays and its refusals.
        document = httpx.get(f"{server.url}/openapi.json").json()
        for operation in (op for path in document["paths"].values() for op in path.values()):
            operation["parameters"] = [
                p for p in operation.get("parameters", ()) if p["name"] != "Idempotency-Key"
            ]
        schema = tmp_path / "openapi.json"
        schema.write_bytes(orjson.dumps(document))
        run = subprocess.run(
            [
                str(SCHEMATHESIS), "--config-file", str(CONFIG), "--no-color", "run",
                str(schema), "--url", server.url,
                "--header", f"Authorization: Bearer {ADMIN_KEY}",
                "--max-examples", "40", "--seed", "20261125", "--workers", "1",
                "--generation-database", "none", "--report-dir", str(tmp_path),
            ],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    finally:
        server.stop()
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
    assert "27 selected / 27 total" in run.stdout  # every operation was tested
    assert "enabled = false" not in CONFIG.read_text()  # with every check on


LINTERS = REPO / "tools" / "openapi-lint"


@pytest.mark.parametrize(
    "command",
    [
        ["redocly", "lint", "--format", "stylish"],
        ["spectral", "lint", "--fail-severity", "warn", "-r", ".spectral.yaml"],
    ],
    ids=["redocly", "spectral"],
)
def test_third_party_linters_find_nothing_in_the_document(command: list[str], tmp_path: Path) -> None:
    """Redocly's recommended rules and Spectral's spectral:oas, as pinned in tools/openapi-lint."""
    document = tmp_path / "openapi.json"
    document.write_bytes(orjson.dumps(openapi_document(OPERATIONS)))
    binary = LINTERS / "node_modules" / ".bin" / command[0]
    assert binary.exists(), "run scripts/bootstrap.sh (make test does), which installs the linters"
    run = subprocess.run(
        [str(binary), *command[1:], str(document)],
        capture_output=True, text=True, timeout=300, cwd=LINTERS,
        env={**os.environ, "REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true"},
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "warning" not in output.replace("Deprecation warning", ""), output
