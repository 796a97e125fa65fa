"""``coupon-pool bench``: drive a running service, and the ceiling beside it, and report."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import sys
import uuid
from collections import Counter, deque
from collections.abc import Awaitable
from typing import Any

import orjson

from ...models import CouponType
from ..common import ADMIN_KEY_ENV, URL_ENV, ProgressLine, service_url
from . import report
from .http import BenchError, Target, expect
from .oneshot import bench_megadeal, bench_upload, megadeal_table, upload_table
from .reference import ReferenceServer
from .run import Scenario, drive
from .scenarios import AFTER_RUN_S, MIXED_POOL, Allocate, Collect, Mixed, Redeem, Validate, parse_mix

RATE_CEILING = 15_000  # requests a second one service worker could answer here, generously
ERRORS_THAT_DOMINATE = 0.1  # a share of failed requests past which the figures are about errors
SCENARIOS = {
    "allocate": "allocations for new users, by --mix\n"
    + " " * 12
    + "(a pool of 10 coupons of 1,000,000 usages per type)",
    "redeem": "redemptions of allocations made beforehand (--prepare of them; not measured)",
    "validate": "validations of allocations made beforehand (--prepare of them), each sent again and again",
    "upload": "--uploads uploads of 50,000 coupons, timed alone and beside an allocation probe",
    "megadeal": "--burst MEGADEAL allocations at once, against the gate's limits",
    "mixed": "per 20 requests: 10 allocations, 6 redemptions, 2 stats, 2 coupon reads\n"
    + " " * 12
    + "(a pool of 100-usage coupons sized to the run)",
}
DEFAULT_REDIS_URL = "redis://127.0.0.1:6390/0"  # the Redis `make run` starts
OLD_KEY_ENV = "COUPON_POOL_API_KEY"
DESCRIPTION = (
    "Load-test a running coupon-pool service, and optionally a reference beside it.\n\nscenarios:\n"
    + "".join(f"  {name:<9} {text}\n" for name, text in SCENARIOS.items())
)
EPILOG = f"""\
The bench adds coupons and allocations to the pool it measures, so it refuses a pool that
already holds coupons unless given --into-existing-pool. Best: run the service on a
namespace of its own (KEY_NAMESPACE=bench), and drop it afterwards with
  redis-cli --scan --pattern '{{bench}}:*' | xargs -r -n 1000 redis-cli unlink
Its coupons expire an hour after the run; the purge then deletes those never redeemed.

environment: {URL_ENV} (--url), {ADMIN_KEY_ENV} (--api-key), REDIS_URL (--redis-url)"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coupon-pool bench", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Help
    )
    p.add_argument("scenario", choices=SCENARIOS, help="what to measure (see above)")
    p.add_argument(
        "--url", default=service_url(), help=f"the running service (${URL_ENV}, else 127.0.0.1:$PORT)"
    )
    p.add_argument("--api-key", default=os.environ.get(ADMIN_KEY_ENV),
                   help=f"an admin key, if the service has keys (${ADMIN_KEY_ENV})")  # fmt: skip
    p.add_argument("--into-existing-pool", action="store_true",
                   help="measure a pool that already holds coupons (the bench adds its own)")  # fmt: skip
    p.add_argument("--connections", type=int, default=100, help="concurrent keep-alive connections")
    p.add_argument("--duration", type=float, default=10.0, help="seconds to measure")
    p.add_argument("--requests", type=int, help="measure this many requests instead of a duration")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of the same load before measuring")
    p.add_argument("--mix", default="STANDARD=1", help="allocation types and weights, e.g. STANDARD=8,FREE=2")
    p.add_argument("--idempotency-keys", action="store_true",
                   help="allocate: send each allocation with an Idempotency-Key of its own")  # fmt: skip
    p.add_argument("--reference", action="store_true",
                   help="also run the ceiling (a bare Starlette endpoint calling one Lua script) and "
                        "report ratios")  # fmt: skip
    p.add_argument("--pipelined-reference", action="store_true",
                   help="with --reference: auto-pipeline the ceiling's script calls too")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers of the reference server")
    p.add_argument("--rounds", type=int, default=1,
                   help="with --reference: measure reference and service this many times, in turn, "
                        "and report the round with the median throughput ratio")  # fmt: skip
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
                   help="the service's Redis, for the references (REDIS_URL, else make run's)")  # fmt: skip
    p.add_argument("--prepare", type=int, default=40_000,
                   help="redeem, validate: allocations made beforehand")  # fmt: skip
    p.add_argument("--hold-s", type=int, default=None,
                   help="allocate, mixed: each allocation holds its coupon this long (hold_s)")  # fmt: skip
    p.add_argument("--uploads", type=int, default=3, help="upload: 50,000-coupon uploads to time")
    p.add_argument("--probe-connections", type=int, default=10, help="upload: allocation probe connections")
    p.add_argument("--burst", type=int, default=150, help="megadeal: simultaneous requests")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


class _Help(argparse.RawDescriptionHelpFormatter):
    """The description as written, and every option's default (a flag's is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            text += " (default: %(default)s)"
        return text


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.requests is not None:
        args.duration = None
    if args.api_key is None and os.environ.get(OLD_KEY_ENV):
        print(f"coupon-pool bench: {OLD_KEY_ENV} is no longer read: name it {ADMIN_KEY_ENV}, as the "
              "service's COUPON_POOL_ADMIN_KEYS", file=sys.stderr)  # fmt: skip
        return 2
    try:
        result = _run_loop(bench(args))
    except (BenchError, ValueError) as exc:
        print(f"coupon-pool bench: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        print(_table(result))
    if not args.quiet:
        hours = AFTER_RUN_S // 3600
        print(f"coupon-pool bench: its coupons (codes with {result['run_id']} in them) stay in the pool at "
              f"{args.url} until they expire, {hours} h after the run; the purge then deletes those never "
              "redeemed (see --help to drop a namespace of its own at once)", file=sys.stderr)  # fmt: skip
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
    stored = await _coupons_stored(target)
    if stored and not args.into_existing_pool:
        raise BenchError(
            f"the pool at {args.url} already holds {stored:,} coupons, and the bench would add its own "
            "coupons and allocations to it. Point it at a service with a pool of its own "
            "(KEY_NAMESPACE=bench), or pass --into-existing-pool"
        )
    run_id = uuid.uuid4().hex[:8]
    progress = None if args.quiet else ProgressLine()
    result = await _scenario(args, target, run_id, progress)
    result["run_id"] = run_id
    return result


async def _scenario(
    args: argparse.Namespace, target: Target, run_id: str, progress: ProgressLine | None
) -> dict[str, Any]:
    if args.scenario == "upload":
        return await bench_upload(args, target, run_id, progress)
    if args.scenario == "megadeal":
        return await bench_megadeal(args, target, run_id)

    mix = parse_mix(args.mix)

    rounds = max(1, args.rounds) if args.reference else 1
    run_s = ((args.duration or (args.requests or 0) / 1000) + args.warmup) * rounds * 2

    def allocate_on(on: Target) -> Allocate:
        pool = mixed_pool(args, mix) if args.scenario == "mixed" else {}
        return Allocate(
            on,
            run_id,
            mix,
            keyed=args.idempotency_keys,
            expires_in_s=AFTER_RUN_S + run_s,
            hold_s=args.hold_s,
            **pool,
        )

    def scenario_for(on: Target) -> Scenario:
        if args.scenario == "redeem":
            # The service redeems each allocation once, over all rounds; the reference (which
            # only counts) gets the same requests again.
            return Redeem(allocations if on is target else deque(for_reference), on)
        if args.scenario == "validate":
            return Validate(for_reference, on)
        return Mixed(allocate_on(on)) if args.scenario == "mixed" else allocate_on(on)

    for request in allocate_on(target).setup_requests():
        await expect(target, request, 201)
    allocations: deque[tuple[str, str]] = deque()
    for_reference: list[tuple[str, str]] = []
    if args.scenario == "validate":  # validations are not used up: a few distinct ones do
        args.prepare = min(args.prepare, 10_000)
    if args.scenario in ("redeem", "validate"):
        for_reference = await _allocations_to_redeem(target, run_id, mix, args)
        allocations = deque(for_reference)

    async def measure(on: Target) -> dict[str, Any]:
        label = "service" if on is target else "reference"
        measured = report.summary(
            await drive(
                on,
                scenario_for(on),
                args.connections,
                args.duration,
                args.requests,
                args.warmup,
                progress,
                label,
            )
        )
        warn_if_failing(label, measured)
        return measured

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


def mixed_pool(args: argparse.Namespace, mix: dict[CouponType, int]) -> dict[str, int]:
    """The mixed scenario's pool, large enough that the run never empties it: allocations
    are half its requests, at most RATE_CEILING a second, split by the mix's weights."""
    requests = args.requests if args.requests is not None else (args.duration or 0) * RATE_CEILING
    requests += args.warmup * RATE_CEILING
    rounds = max(1, args.rounds) if args.reference else 1
    heaviest = max(mix.values()) / sum(mix.values())
    allocations = requests * rounds * heaviest / 2
    usages = MIXED_POOL["max_usages"]
    return {"coupons_per_type": max(MIXED_POOL["coupons_per_type"], math.ceil(allocations * 1.2 / usages)),
            "max_usages": usages}  # fmt: skip


def warn_if_failing(label: str, measured: dict[str, Any]) -> None:
    """Say so when errors dominate a measurement: its figures then describe the errors."""
    failed = sum(measured["errors"].values())
    if measured["requests"] and failed / measured["requests"] > ERRORS_THAT_DOMINATE:
        worst = ", ".join(f"{code} {count:,}" for code, count in Counter(measured["errors"]).most_common(3))
        share = failed / measured["requests"]
        print(f"coupon-pool bench: warning: {share:.0%} of the {label}'s requests failed ({worst}): "
              f"these figures measure errors, not the {label}", file=sys.stderr)  # fmt: skip


async def _coupons_stored(target: Target) -> int:
    """Coupons in the service's pool now (created, less those the purge deleted)."""
    totals = orjson.loads(await expect(target, target.request("GET", "/v1/stats"), 200))["totals"]
    return int(totals["created"]) - int(totals["purged"])


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
