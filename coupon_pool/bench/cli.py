"""``coupon-pool bench``: drive a running service, and the ceiling beside it, and report."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from ..keys import Keys
from ..models import CouponType, UploadRequest
from ..store import Store
from . import report
from .http import HttpError, Target
from .reference import ReferenceServer
from .run import Scenario, drive, stderr_progress
from .scenarios import MIXED_POOL, UPLOAD_SIZE, Allocate, Collect, Mixed, Redeem, coupons_body, parse_mix

SCENARIOS = ("allocate", "redeem", "upload", "megadeal", "mixed")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6390/0"  # the Redis `make run` starts


class BenchError(Exception):
    """The bench cannot go on (service down, preparation refused)."""


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
        return _upload_table(result)
    if result["scenario"] == "megadeal":
        return _megadeal_table(result)
    return report.load_table(result)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    target = Target(args.url, args.api_key)
    await _expect(target, target.request("GET", "/healthz"), 200)
    run_id = uuid.uuid4().hex[:8]
    progress = None if args.quiet else stderr_progress
    if args.scenario == "upload":
        return await bench_upload(args, target, run_id, progress)
    if args.scenario == "megadeal":
        return await bench_megadeal(args, target, run_id)

    mix = parse_mix(args.mix)

    def allocate_on(on: Target) -> Allocate:
        return Allocate(on, run_id, mix, **(MIXED_POOL if args.scenario == "mixed" else {}))

    def scenario_for(on: Target) -> Scenario:
        if args.scenario == "redeem":
            # The service redeems each allocation once, over all rounds; the reference (which
            # only counts) gets the same requests again.
            return Redeem(allocations if on is target else deque(for_reference), on)
        return Mixed(allocate_on(on)) if args.scenario == "mixed" else allocate_on(on)

    for request in allocate_on(target).setup_requests():
        await _expect(target, request, 201)
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


async def bench_upload(
    args: argparse.Namespace, target: Target, run_id: str, progress: Callable[[str], None] | None
) -> dict[str, Any]:
    """Time repeated 50,000-coupon uploads alone (as the reference runs), then again while
    an allocation probe runs, whose latency is compared with its idle latency."""
    types = tuple(CouponType)
    bodies = [coupons_body(f"U{run_id}{i}", UPLOAD_SIZE, types) for i in range(args.uploads)]
    probed_bodies = [coupons_body(f"UP{run_id}{i}", UPLOAD_SIZE, types) for i in range(args.uploads)]
    # Built before the probe starts: a 10 MB concatenation would stall this process's loop.
    uploads = [target.request("POST", "/v1/coupons", body) for body in bodies]
    probed_uploads = [target.request("POST", "/v1/coupons", body) for body in probed_bodies]
    probe = Allocate(target, run_id, {CouponType.STANDARD: 1})
    for request in probe.setup_requests():
        await _expect(target, request, 201)
    # One upload large enough for the upload worker, so its start-up is not timed.
    warmup = coupons_body(f"UW{run_id}", 2_000, types)
    await _expect(target, target.request("POST", "/v1/coupons", warmup), 201)

    idle = await drive(target, probe, args.probe_connections, 3.0, None, 1.0)
    times = await upload_all(target, uploads)
    uploads_done = False

    class Probe:
        def next_request(self) -> tuple[str, bytes] | None:
            return None if uploads_done else probe.next_request()

        def on_response(self, op: str, status: int, body: bytes) -> None:
            pass

    probing = asyncio.create_task(drive(target, Probe(), args.probe_connections, None, None, 0))
    await asyncio.sleep(0.5)  # the probe runs before the first upload starts
    try:
        probed_times = await upload_all(target, probed_uploads)
    finally:
        uploads_done = True
    during = await probing
    idle_summary, during_summary = report.summary(idle), report.summary(during)
    result: dict[str, Any] = {
        "scenario": "upload",
        "target": args.url,
        "coupons_per_upload": UPLOAD_SIZE,
        "upload_s": [round(t, 3) for t in times],
        "upload_median_s": round(statistics.median(times), 3),
        "upload_during_probe_s": [round(t, 3) for t in probed_times],
        "probe": {
            "connections": args.probe_connections,
            "idle": idle_summary,
            "during_upload": during_summary,
            "p99_ratio": round(during_summary["latency_ms"]["p99"] / idle_summary["latency_ms"]["p99"], 3),
        },
    }
    if args.reference:
        reference = await _reference_uploads(bodies, args.redis_url)
        result["reference_s"] = [round(t, 3) for t in reference]
        result["reference_median_s"] = round(statistics.median(reference), 3)
        result["ratio"] = round(result["upload_median_s"] / result["reference_median_s"], 3)
    return result


async def upload_all(target: Target, uploads: list[bytes]) -> list[float]:
    """Send the uploads one after another on one connection; the time of each."""
    times = []
    conn = await target.connect()
    try:
        for request in uploads:
            started = time.perf_counter()
            status, answer = await conn.send(request)
            times.append(time.perf_counter() - started)
            if status != 201:
                raise BenchError(f"upload answered {status}: {answer[:200]!r}")
    finally:
        conn.close()
    return times


async def _reference_uploads(bodies: list[bytes], redis_url: str) -> list[float]:
    """Validate each body and write it with the same scripts, in process: no HTTP."""
    redis = Redis.from_url(redis_url, decode_responses=True)
    keys = Keys("bench-reference")
    store = Store(redis, keys)
    times = []
    try:
        for body in bodies:
            started = time.perf_counter()
            coupons = UploadRequest.model_validate_json(body).coupons
            await store.upload(coupons)
            times.append(time.perf_counter() - started)
    finally:
        async for key in redis.scan_iter(match="{bench-reference}:*", count=1000):
            await redis.unlink(key)
        await redis.aclose()
    return times


async def bench_megadeal(args: argparse.Namespace, target: Target, run_id: str) -> dict[str, Any]:
    """A burst of simultaneous MEGADEAL allocations: what the gate served, and when."""
    body = coupons_body(f"MD{run_id}", args.burst, (CouponType.MEGADEAL,))
    await _expect(target, target.request("POST", "/v1/coupons", body), 201)
    connections = [await target.connect() for _ in range(args.burst)]
    started = time.perf_counter()

    async def one(i: int) -> tuple[int, bytes, float]:
        request = target.request(
            "POST", "/v1/allocations", b'{"user_id":"md%s-%d","type":"MEGADEAL"}' % (run_id.encode(), i)
        )
        status, answer = await connections[i].send(request)
        return status, answer, time.perf_counter() - started

    try:
        answers = await asyncio.gather(*(one(i) for i in range(args.burst)))
    finally:
        for conn in connections:
            conn.close()
    served = [(orjson.loads(a), t) for s, a, t in answers if s == 201]
    busy = [t for s, _, t in answers if s == 429]
    others: dict[str, int] = {}
    for status, answer, _ in answers:
        if status not in (201, 429):
            code = orjson.loads(answer).get("code", f"http_{status}")
            others[code] = others.get(code, 0) + 1
    allocated_ms = sorted(
        round(datetime.fromisoformat(a["allocated_at"]).timestamp() * 1000) for a, _ in served
    )
    waits = sorted(t for _, t in served)
    return {
        "scenario": "megadeal",
        "target": args.url,
        "burst": args.burst,
        "served": len(served),
        "busy": len(busy),
        "errors": others,
        "max_in_rolling_second": max(
            (sum(1 for u in allocated_ms if t <= u < t + 1000) for t in allocated_ms), default=0
        ),
        "served_wait_s": {"p50": round(statistics.median(waits), 3), "max": round(waits[-1], 3)}
        if waits
        else None,
        "busy_after_s": {"min": round(min(busy), 3), "max": round(max(busy), 3)} if busy else None,
    }


def _upload_table(r: dict[str, Any]) -> str:
    idle, during = r["probe"]["idle"]["latency_ms"], r["probe"]["during_upload"]["latency_ms"]
    lines = [
        f"upload: {len(r['upload_s'])} x {r['coupons_per_upload']:,} coupons, target {r['target']}",
        f"  end to end: median {r['upload_median_s']:.3f} s  (each: {', '.join(map(str, r['upload_s']))})",
    ]
    if "ratio" in r:
        lines.append(f"  reference (validate + same scripts, no HTTP): median {r['reference_median_s']:.3f} s"
                     f"  -> ratio {r['ratio']:.2f}x")  # fmt: skip
    lines.append(f"  allocation p99 idle {idle['p99']:.2f} ms, during uploads {during['p99']:.2f} ms"
                 f"  -> {r['probe']['p99_ratio']:.2f}x"
                 f"  (those uploads: {', '.join(map(str, r['upload_during_probe_s']))} s)")  # fmt: skip
    errors = {**r["probe"]["idle"]["errors"], **r["probe"]["during_upload"]["errors"]}
    lines += [f"  probe error {code}: {n}" for code, n in errors.items()]
    return "\n".join(lines)


def _megadeal_table(r: dict[str, Any]) -> str:
    lines = [
        f"megadeal: burst of {r['burst']}, target {r['target']}",
        f"  served {r['served']}, 429 megadeal_busy {r['busy']}, other errors {sum(r['errors'].values())}",
        f"  most allocations in a rolling second: {r['max_in_rolling_second']}",
    ]
    if r["served_wait_s"]:
        waits = r["served_wait_s"]
        lines.append(f"  served after: median {waits['p50']} s, max {waits['max']} s")
    if r["busy_after_s"]:
        lines.append(f"  429 answered after {r['busy_after_s']['min']}-{r['busy_after_s']['max']} s")
    return "\n".join(lines)


async def _expect(target: Target, request: bytes, status: int) -> bytes:
    """Send one request on a connection of its own; insist on ``status``."""
    try:
        conn = await target.connect()
    except OSError as exc:
        raise BenchError(f"cannot reach {target.host}:{target.port}: {exc}") from None
    try:
        got, answer = await conn.send(request)
    except HttpError as exc:
        raise BenchError(str(exc)) from None
    finally:
        conn.close()
    if got != status:
        raise BenchError(f"expected {status}, got {got}: {answer[:300]!r}")
    return answer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
