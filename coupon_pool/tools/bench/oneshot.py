"""The bench's one-shot scenarios: timed 50,000-coupon uploads, and a MEGADEAL burst."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time
from datetime import datetime
from typing import Any

import orjson

from ...models import CouponType, UploadRequest
from ...pool.store import Store
from ...settings import Settings
from ..common import ProgressLine
from . import report
from .http import BenchError, Target, expect
from .run import drive
from .scenarios import UPLOAD_SIZE, Allocate, coupons_body


async def bench_upload(
    args: argparse.Namespace, target: Target, run_id: str, progress: ProgressLine | None
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
        await expect(target, request, 201)
    # One upload large enough for the upload worker, so its start-up is not timed.
    warmup = coupons_body(f"UW{run_id}", 2_000, types)
    await expect(target, target.request("POST", "/v1/coupons", warmup), 201)

    idle = await drive(target, probe, args.probe_connections, 3.0, None, 1.0, progress, "probe")
    times = await upload_all(target, uploads, progress, "service")
    uploads_done = False

    class Probe:
        def next_request(self) -> tuple[str, bytes] | None:
            return None if uploads_done else probe.next_request()

        def on_response(self, op: str, status: int, body: bytes) -> None:
            pass

    probing = asyncio.create_task(drive(target, Probe(), args.probe_connections, None, None, 0))
    await asyncio.sleep(0.5)  # the probe runs before the first upload starts
    try:
        probed_times = await upload_all(target, probed_uploads, progress, "service, beside the probe")
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


async def upload_all(
    target: Target, uploads: list[bytes], progress: ProgressLine | None = None, label: str = ""
) -> list[float]:
    """Send the uploads one after another on one connection; the time of each."""
    times: list[float] = []
    conn = await target.connect()
    try:
        for request in uploads:
            started = time.perf_counter()
            status, answer = await conn.send(request)
            times.append(time.perf_counter() - started)
            if status != 201:
                raise BenchError(f"upload answered {status}: {answer[:200]!r}")
            if progress:
                progress.tick(f"{label}: upload {len(times)} of {len(uploads)} took {times[-1]:.2f} s")
    finally:
        conn.close()
    if progress:
        progress.end()
    return times


async def _reference_uploads(bodies: list[bytes], redis_url: str) -> list[float]:
    """Validate each body and write it with the same scripts, in process: no HTTP."""
    # The service's settings (UPLOAD_CHUNK_SIZE and the rest) but a namespace of its own.
    settings = dataclasses.replace(Settings.from_env(), redis_url=redis_url, key_namespace="bench-reference")
    store = Store.from_settings(settings, max_connections=2)
    redis = store.redis
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
        await store.aclose()
    return times


async def bench_megadeal(args: argparse.Namespace, target: Target, run_id: str) -> dict[str, Any]:
    """A burst of simultaneous MEGADEAL allocations: what the gate served, and when."""
    body = coupons_body(f"MD{run_id}", args.burst, (CouponType.MEGADEAL,))
    await expect(target, target.request("POST", "/v1/coupons", body), 201)
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


def upload_table(r: dict[str, Any]) -> str:
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


def megadeal_table(r: dict[str, Any]) -> str:
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
