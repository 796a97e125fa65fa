"""The OpenAPI document holds: schemathesis generates requests from /openapi.json and checks every answer.

Valid and invalid bodies, parameters and headers for every route, with and without an API
key, against a real server with keys configured: no 5xx, every status and body as the
document says, invalid input refused, missing auth refused. Bounded for CI by
--max-examples and a fixed seed (a failure names the seed and the case to replay).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import LiveServer, RedisServer
from redis.asyncio import Redis

ADMIN_KEY = "schemathesis-admin-key-0123456789"
CLIENT_KEY = "schemathesis-client-key-0123456789"
CONFIG = Path(__file__).with_name("schemathesis.toml")
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
        run = subprocess.run(
            [
                str(SCHEMATHESIS), "--config-file", str(CONFIG), "--no-color", "run",
                f"{server.url}/openapi.json",
                "--header", f"Authorization: Bearer {ADMIN_KEY}",
                "--max-examples", "40", "--seed", "20261125", "--workers", "1",
                "--generation-database", "none", "--report-dir", str(tmp_path),
            ],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
    finally:
        server.stop()
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
    assert "10 selected / 10 total" in run.stdout  # every route was tested
