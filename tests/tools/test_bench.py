"""`coupon-pool bench` in its short smoke mode against a live server: shape and zero errors.

Timing is not asserted here (the machine is shared and noisy); docs/benchmarks.md holds
the figures and the commands that produce them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from typing import Any

import httpx
import orjson
import pytest
import redis

from coupon_pool.models import CouponType
from coupon_pool.tools.bench.cli import RATE_CEILING, mixed_pool, warn_if_failing
from support.live_server import LiveServer
from support.redis_server import RedisServer

SMALL = ["--requests", "300", "--connections", "20", "--warmup", "0", "--json", "--quiet"]
LATENCY_KEYS = {"p50", "p95", "p99", "max"}


@pytest.fixture(autouse=True)
def empty_pool(redis_server: RedisServer) -> None:
    """The bench refuses a pool that holds coupons: each test starts on an empty one."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()


def run_bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coupon_pool", "bench", *args],
        capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **(env or {})},
    )  # fmt: skip


def bench(live_server: LiveServer, redis_server: RedisServer, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "coupon_pool.tools.bench", *args, "--url", live_server.url,
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


@pytest.mark.parametrize("scenario", ["allocate", "redeem", "validate", "mixed"])
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
        "validate": {"validate"},
        "mixed": {"allocate", "redeem", "stats", "coupon"},
    }
    assert set(result["service"]["ops"]) <= expected_ops[scenario]


def test_held_allocations_hold_their_coupons(live_server: LiveServer, redis_server: RedisServer) -> None:
    before = httpx.get(f"{live_server.url}/v1/stats").json()["types"]["FREE"]["held"]
    result = bench(live_server, redis_server, "allocate", *SMALL, "--hold-s", "600", "--mix", "FREE=1")
    assert_clean_load(result["service"], 300)
    held = httpx.get(f"{live_server.url}/v1/stats").json()["types"]["FREE"]["held"]
    assert held - before == 300  # --warmup 0: the 300 measured, every one a hold


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
        [sys.executable, "-m", "coupon_pool.tools.bench", "allocate", "--url", "http://127.0.0.1:9", *SMALL],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert b"cannot reach 127.0.0.1:9" in done.stderr


def test_a_pool_that_holds_coupons_is_refused_unless_asked(live_server: LiveServer) -> None:
    coupon = {
        "code": "REAL-1",
        "discount": {"kind": "flat", "value": "1"},
        "expires_at": "2099-01-01T00:00:00Z",
    }
    assert httpx.post(f"{live_server.url}/v1/coupons", json={"coupons": [coupon]}).status_code == 201

    refused = run_bench("allocate", "--url", live_server.url, *SMALL)
    taken = run_bench("allocate", "--url", live_server.url, *SMALL, "--into-existing-pool")

    assert refused.returncode == 1
    assert "already holds 1 coupons" in refused.stderr
    assert "KEY_NAMESPACE=bench" in refused.stderr
    assert taken.returncode == 0, taken.stderr


def test_progress_names_what_it_measures_and_ends_on_the_duration(
    live_server: LiveServer, redis_server: RedisServer
) -> None:
    done = run_bench("allocate", "--url", live_server.url, "--redis-url", redis_server.url, "--reference",
                     "--duration", "2", "--warmup", "1.8", "--connections", "5")  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr  # not a terminal: one line per tick
    lines = done.stderr.splitlines()
    labels = [line.split()[0] for line in lines if line.startswith(("reference", "service"))]
    # Each target in turn: a warm-up tick, a tick a second, and a closing line on the duration.
    assert labels == ["reference"] * labels.count("reference") + ["service"] * labels.count("service")
    warmups = [line for line in lines if " warm-up " in line]
    assert [w.split()[0] for w in warmups] == ["reference", "service"]
    assert warmups[0].startswith("reference  warm-up  1.0 of 1.8 s")
    closing = [line for line in lines if re.match(r"^(reference|service) +2\.0 s ", line)]
    assert [c.split()[0] for c in closing] == ["reference", "service"]
    assert "its coupons (codes with" in lines[-1]


def test_help_explains_every_scenario_and_default_without_markup() -> None:
    done = run_bench("--help", env={"PORT": "x"})

    assert done.returncode == 0
    for scenario in ("allocate", "redeem", "upload", "megadeal", "mixed"):
        assert re.search(rf"^  {scenario} +\S", done.stdout, re.MULTILINE), scenario
    assert "(default: 100)" in done.stdout  # --connections
    assert "(default: http://127.0.0.1:8080)" in done.stdout
    assert "``" not in done.stdout
    assert "COUPON_POOL_ADMIN_KEY" in done.stdout


def test_the_old_key_variable_is_refused_with_its_new_name() -> None:
    done = run_bench("allocate", env={"COUPON_POOL_API_KEY": "k" * 20})

    assert done.returncode == 2
    assert "COUPON_POOL_API_KEY is no longer read: name it COUPON_POOL_ADMIN_KEY" in done.stderr


def test_a_long_mixed_run_gets_a_pool_it_cannot_empty() -> None:
    args = argparse.Namespace(requests=None, duration=480.0, warmup=2.0, rounds=1, reference=False)

    pool = mixed_pool(args, {CouponType.STANDARD: 8, CouponType.FREE: 2})

    # Half the requests allocate, 8 in 10 of them STANDARD, at the most a service answers.
    assert pool["coupons_per_type"] * pool["max_usages"] >= 482 * RATE_CEILING / 2 * 0.8
    short = argparse.Namespace(requests=300, duration=None, warmup=0.0, rounds=1, reference=False)
    assert mixed_pool(short, {CouponType.STANDARD: 1}) == {"coupons_per_type": 2_000, "max_usages": 100}


def test_errors_that_dominate_a_run_are_called_out(capsys: pytest.CaptureFixture[str]) -> None:
    warn_if_failing("service", {"requests": 1000, "errors": {"pool_empty": 820, "connection_error": 3}})
    warn_if_failing("service", {"requests": 1000, "errors": {"pool_empty": 20}})

    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        "coupon-pool bench: warning: 82% of the service's requests failed "
        "(pool_empty 820, connection_error 3): these figures measure errors, not the service"
    ]
