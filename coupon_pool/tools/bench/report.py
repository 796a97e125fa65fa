"""Turning measurements into figures: percentiles, a summary dict, and the human table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .run import Measured

# The percentiles kept in --json output: enough to draw a latency curve.
CURVE = (50, 75, 90, 95, 97.5, 99, 99.5, 99.9, 100)


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """The q-th percentile (nearest rank) of sorted nanoseconds, in milliseconds."""
    if not sorted_ns:
        return 0.0
    rank = max(1, round(q / 100 * len(sorted_ns)))
    return sorted_ns[min(rank, len(sorted_ns)) - 1] / 1e6


def latency(latencies_ns: Sequence[int]) -> dict[str, float]:
    ordered = sorted(latencies_ns)
    return {
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": percentile(ordered, 100),
    }


def summary(measured: Measured) -> dict[str, Any]:
    everything = sorted(ns for record in measured.ops.values() for ns in record.latencies_ns)
    return {
        "requests": measured.requests,
        "seconds": round(measured.seconds, 3),
        "throughput": round(measured.requests / measured.seconds, 1) if measured.seconds else 0.0,
        "latency_ms": latency(everything),
        "curve_ms": {str(q): percentile(everything, q) for q in CURVE},
        "errors": dict(measured.errors),
        "ops": {
            op: {
                "requests": len(record.latencies_ns),
                "latency_ms": latency(record.latencies_ns),
                "errors": dict(record.errors),
            }
            for op, record in sorted(measured.ops.items())
        },
    }


def ratios(service: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """Service over reference: throughput (higher is better) and p99 latency (lower is better)."""
    return {
        "throughput": round(service["throughput"] / reference["throughput"], 3),
        "p99": round(service["latency_ms"]["p99"] / reference["latency_ms"]["p99"], 3),
    }


def load_table(result: dict[str, Any]) -> str:
    """The human table of a load scenario, with the reference beside it when there is one."""
    columns = [("service", result["service"])]
    if result.get("reference"):
        name = "pipelined ref" if result.get("reference_pipelined") else "reference"
        columns.append((name, result["reference"]))
    head = f"{'':<14}" + "".join(f"{name:>14}" for name, _ in columns)
    rows = [f"{result['scenario']}: {result['connections']} connections, target {result['target']}", head]

    def row(label: str, values: list[str]) -> None:
        rows.append(f"{label:<14}" + "".join(f"{v:>14}" for v in values))

    row("requests", [f"{c['requests']:,}" for _, c in columns])
    row("req/s", [f"{c['throughput']:,.0f}" for _, c in columns])
    for q in ("p50", "p95", "p99", "max"):
        row(f"{q} ms", [f"{c['latency_ms'][q]:.2f}" for _, c in columns])
    row("errors", [str(sum(c["errors"].values())) for _, c in columns])
    if len(result["service"]["ops"]) > 1:
        for op, figures in result["service"]["ops"].items():
            lat, count = figures["latency_ms"], figures["requests"]
            rows.append(f"  {op:<12} {count:>9,}  p50 {lat['p50']:.2f}  p99 {lat['p99']:.2f} ms")
    for code, count in sorted(result["service"]["errors"].items()):
        rows.append(f"  error {code}: {count:,}")
    if result.get("ratios"):
        r = result["ratios"]
        rows.append(f"service / reference: throughput {r['throughput']:.0%}, p99 {r['p99']:.2f}x")
    if result.get("rounds"):
        each = ", ".join(f"{r['throughput']:.0%} / {r['p99']:.2f}x" for r in result["rounds"])
        rows.append(f"  rounds (throughput / p99): {each}; the median round is shown")
    return "\n".join(rows)
