"""``coupon-pool bench``: drive a running service, and the ceiling beside it, and report."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import uuid
from collections import deque
from collections.abc import Awaitable
from typing import Any

import orjson

from ..models import CouponType
from . import report
from .http import BenchError, Target, expect
from .oneshot import bench_megadeal, bench_upload, megadeal_table, upload_table
from .reference import ReferenceServer
from .run import Scenario, drive, stderr_progress
from .scenarios import MIXED_POOL, Allocate, Collect, Mixed, Redeem, parse_mix

SCENARIOS = ("allocate", "redeem", "upload", "megadeal", "mixed")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6390/0"  # the Redis `make run` starts


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coupon-pool bench", description=__doc__)
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the running service")
    p.add_argument("--api-key", default=os.environ.get("COUPON_POOL_API_KEY"),
                   help="an admin key, if the service has keys (COUPON_POOL_API_KEY)")  # fmt: skip
    p.add_argument("--connections", type=int, default=100, help="concurrent keep-alive connections")
    p.add_argument("--duration", type=float, default=10.0, help="seconds to measure (default 10)")
    p.add_argument("--requests", type=int, help="measure this many requests instead of a duration")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    p.add_argument("--mix", default="STANDARD=1", help="allocation types and weights: STANDARD=8,FREE=2")
    p.add_argument("--idempotency-keys", action="store_true",
                   help="allocate: send each allocation with an Idempotency-Key of its own")  # fmt: skip
    p.add_argument("--reference", action="store_true", help="run the ceiling too, and report ratios")
    p.add_argument("--pipelined-reference", action="store_true",
                   help="with --reference: auto-pipeline the ceiling's script calls too")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers of the reference server")
    p.add_argument("--rounds", type=int, default=1,
                   help="with --reference: measure reference and service this many times, in turn, "
                        "and report the round with the median throughput ratio")  # fmt: skip
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
                   help="the service's Redis, for the references (REDIS_URL, else make run's)")  # fmt: skip
    p.add_argument("--prepare", type=int, default=40_000, help="redeem: allocations made beforehand")
    p.add_argument("--uploads", type=int, default=3, help="upload: 50,000-coupon uploads to time")
    p.add_argument("--probe-connections", type=int, default=10, help="upload: allocation probe connections")
    p.add_argument("--burst", type=int, default=150, help="megadeal: simultaneous requests")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.requests is not None:
        args.duration = None
    try:
        result = _run_loop(bench(args))
    except (BenchError, ValueError) as exc:
        print(f"coupon-pool bench: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        print(_table(result))
    return 0


def _run_loop(job: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:  # uvloop is not on every platform; the bench works without it
        return asyncio.run(job)  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(job)  # type: ignore[arg-type]


def _table(result: dict[str, Any]) -> str:
    if result["scenario"] == "upload":
        return upload_table(result)
    if result["scenario"] == "megadeal":
        return megadeal_table(result)
    return report.load_table(result)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    target = Target(args.url, args.api_key)
    await expect(target, target.request("GET", "/healthz"), 200)
    run_id = uuid.uuid4().hex[:8]
    progress = None if args.quiet else stderr_progress
    if args.scenario == "upload":
        return await bench_upload(args, target, run_id, progress)
    if args.scenario == "megadeal":
        return await bench_megadeal(args, target, run_id)

    mix = parse_mix(args.mix)

    def allocate_on(on: Target) -> Allocate:
        pool = MIXED_POOL if args.scenario == "mixed" else {}
        return Allocate(on, run_id, mix, keyed=args.idempotency_keys, **pool)

    def scenario_for(on: Target) -> Scenario:
        if args.scenario == "redeem":
            # The service redeems each allocation once, over all rounds; the reference (which
            # only counts) gets the same requests again.
            return Redeem(allocations if on is target else deque(for_reference), on)
        return Mixed(allocate_on(on)) if args.scenario == "mixed" else allocate_on(on)

    for request in allocate_on(target).setup_requests():
        await expect(target, request, 201)
    allocations: deque[tuple[str, str]] = deque()
    for_reference: list[tuple[str, str]] = []
    if args.scenario == "redeem":
        for_reference = await _allocations_to_redeem(target, run_id, mix, args)
        allocations = deque(for_reference)

    async def measure(on: Target) -> dict[str, Any]:
        measured = await drive(
            on, scenario_for(on), args.connections, args.duration, args.requests, args.warmup, progress
        )
        if progress:
            sys.stderr.write("\n")
        return report.summary(measured)

    result: dict[str, Any] = {"scenario": args.scenario, "target": args.url, "connections": args.connections}
    if not args.reference:
        result["service"] = await measure(target)
        return result
    # Reference and service take turns, so a noisy neighbour slows both rather than one.
    pipelined = args.pipelined_reference
    server = ReferenceServer(_free_port(), args.workers, args.redis_url, autopipeline=pipelined)
    rounds = []
    try:
        for _ in range(max(1, args.rounds)):
            reference = await measure(Target(server.url, args.api_key))  # the same request bytes
            service = await measure(target)
            if not (reference["requests"] and service["requests"]):
                raise BenchError("a round measured no requests: give --prepare more allocations")
            rounds.append({"reference": reference, "service": service,
                           "ratios": report.ratios(service, reference)})  # fmt: skip
    finally:
        server.stop()
    median = sorted(rounds, key=lambda r: r["ratios"]["throughput"])[(len(rounds) - 1) // 2]
    result.update(reference_workers=args.workers, reference_pipelined=pipelined, **median)
    if len(rounds) > 1:
        result["rounds"] = [r["ratios"] for r in rounds]
    return result


async def _allocations_to_redeem(
    target: Target, run_id: str, mix: dict[CouponType, int], args: argparse.Namespace
) -> list[tuple[str, str]]:
    """Allocate beforehand what the measured run redeems (and the warm-up, and the reference)."""
    rate_guess = 12_000 * args.workers  # redemptions per second, generously, on a 2-core machine
    needed = args.requests if args.requests is not None else int((args.duration or 0) * rate_guess)
    needed += int(args.warmup * rate_guess)
    needed *= max(1, args.rounds) if args.reference else 1
    collect = Collect(Allocate(target, run_id, mix), min(needed, args.prepare) if needed else args.prepare)
    await drive(target, collect, args.connections, None, None, 0)
    if not collect.allocations:
        raise BenchError("could not allocate any coupon to redeem")
    return collect.allocations


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
