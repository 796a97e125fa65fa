"""`coupon-pool bench` in its short smoke mode against a live server: shape and zero errors.

Timing is not asserted here (the machine is shared and noisy); docs/benchmarks.md holds
the figures and the commands that produce them.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson
import pytest
from conftest import LiveServer, RedisServer

SMALL = ["--requests", "300", "--connections", "20", "--warmup", "0", "--json", "--quiet"]
LATENCY_KEYS = {"p50", "p95", "p99", "max"}


def bench(live_server: LiveServer, redis_server: RedisServer, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "coupon_pool.bench", *args, "--url", live_server.url,
         "--redis-url", redis_server.url],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


def assert_clean_load(figures: dict[str, Any], requests: int) -> None:
    assert figures["requests"] == requests
    assert figures["errors"] == {}
    assert figures["throughput"] > 0
    assert set(figures["latency_ms"]) == LATENCY_KEYS
    curve = list(figures["curve_ms"].values())
    assert curve == sorted(curve)
    assert curve[-1] == figures["latency_ms"]["max"]


@pytest.mark.parametrize("scenario", ["allocate", "redeem", "mixed"])
def test_load_scenarios_with_the_reference(
    scenario: str, live_server: LiveServer, redis_server: RedisServer
) -> None:
    result = bench(
        live_server,
        redis_server,
        scenario,
        *SMALL,
        "--reference",
        "--rounds",
        "2",
        "--mix",
        "STANDARD=8,FREE=2",
    )

    assert (result["scenario"], result["connections"], result["reference_workers"]) == (scenario, 20, 1)
    assert result["reference_pipelined"] is False
    assert_clean_load(result["service"], 300)
    assert_clean_load(result["reference"], 300)
    assert set(result["ratios"]) == {"throughput", "p99"}
    # Two rounds each way; a redeem round never repeats what an earlier one redeemed (no errors).
    assert len(result["rounds"]) == 2
    assert result["ratios"] in result["rounds"]
    expected_ops = {
        "allocate": {"allocate"},
        "redeem": {"redeem"},
        "mixed": {"allocate", "redeem", "stats", "coupon"},
    }
    assert set(result["service"]["ops"]) <= expected_ops[scenario]


def test_the_reference_can_pipeline_its_calls_as_the_service_does(
    live_server: LiveServer, redis_server: RedisServer
) -> None:
    result = bench(live_server, redis_server, "allocate", *SMALL, "--reference", "--pipelined-reference")

    assert result["reference_pipelined"] is True
    assert_clean_load(result["reference"], 300)
    assert_clean_load(result["service"], 300)
    assert sum(op["requests"] for op in result["service"]["ops"].values()) == 300


def test_upload_scenario(live_server: LiveServer, redis_server: RedisServer) -> None:
    result = bench(live_server, redis_server, "upload", "--uploads", "1", "--reference", "--json", "--quiet")

    assert result["coupons_per_upload"] == 50_000
    assert len(result["upload_s"]) == len(result["upload_during_probe_s"]) == 1
    assert len(result["reference_s"]) == 1
    assert result["probe"]["idle"]["errors"] == result["probe"]["during_upload"]["errors"] == {}
    assert result["probe"]["during_upload"]["requests"] > 0
    assert result["ratio"] > 0
    assert result["probe"]["p99_ratio"] > 0


def test_megadeal_burst_within_the_rate(live_server: LiveServer, redis_server: RedisServer) -> None:
    result = bench(live_server, redis_server, "megadeal", "--burst", "15", "--json", "--quiet")

    # 15 requests fit in the 10 s wait: all are served, never more than 10 in a second.
    assert (result["served"], result["busy"], result["errors"]) == (15, 0, {})
    assert result["max_in_rolling_second"] == 10
    assert result["busy_after_s"] is None


def test_an_unreachable_service_is_a_clear_error(redis_server: RedisServer) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "coupon_pool.bench", "allocate", "--url", "http://127.0.0.1:9", *SMALL],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert b"cannot reach 127.0.0.1:9" in done.stderr
