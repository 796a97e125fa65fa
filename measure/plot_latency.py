"""Draw latency percentile curves from `coupon-pool bench ... --json` results, as an SVG.

    python measure/plot_latency.py OUT.svg RESULT.json [RESULT.json ...]

Each result with a reference gets two curves, service (solid) and reference (dashed), in
one colour. The x axis spreads the tail: p50, p90, p99, p99.9 and max are equally far
apart ("nines"). Plain SVG written by hand, so the repo needs no plotting library.
"""

from __future__ import annotations

import math
import sys
from html import escape
from pathlib import Path
from typing import Any

import orjson

WIDTH, HEIGHT = 760, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 200, 40, 60
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
MAX_NINES = 4.0  # where "max" is drawn: past p99.9 (3 nines)


def nines(q: float) -> float:
    """Percentile -> x position in "nines": 50 -> 0.3, 90 -> 1, 99 -> 2, 99.9 -> 3, 100 -> max."""
    return MAX_NINES if q >= 100 else -math.log10(1 - q / 100)


def curves(result: dict[str, Any], label: str) -> list[tuple[str, bool, list[tuple[float, float]]]]:
    """(name, dashed, [(percentile, ms)]) for the service and, if measured, the reference."""
    out = []
    for side, dashed in (("service", False), ("reference", True)):
        if side in result:
            points = [(float(q), ms) for q, ms in result[side]["curve_ms"].items()]
            out.append((f"{label} {side}", dashed, points))
    return out


def svg(series: list[tuple[str, str, bool, list[tuple[float, float]]]], title: str) -> str:
    top_ms = max(ms for *_, points in series for _, ms in points)
    step = 10 ** math.floor(math.log10(top_ms)) if top_ms > 0 else 1
    y_max = math.ceil(top_ms / step) * step or 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(q: float) -> float:
        return LEFT + (nines(q) - nines(50)) / (MAX_NINES - nines(50)) * plot_w

    def y(ms: float) -> float:
        return TOP + plot_h - ms / y_max * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="22" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    for i in range(6):
        ms = y_max * i / 5
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(ms):.1f}" y2="{y(ms):.1f}" stroke="#ddd"/>'
        )
        parts.append(f'<text x="{LEFT - 8}" y="{y(ms) + 4:.1f}" text-anchor="end">{ms:g}</text>')
    for q, name in ((50, "p50"), (90, "p90"), (99, "p99"), (99.9, "p99.9"), (100, "max")):
        parts.append(f'<line x1="{x(q):.1f}" x2="{x(q):.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#eee"/>')
        parts.append(f'<text x="{x(q):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{name}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 15}" text-anchor="middle">percentile</text>')
    parts.append(
        f'<text x="18" y="{TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {TOP + plot_h / 2})">latency, ms</text>'
    )
    for i, (name, colour, dashed, points) in enumerate(series):
        path = " ".join(f"{x(q):.1f},{y(ms):.1f}" for q, ms in sorted(points))
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        ly = TOP + 10 + 20 * i
        lx = LEFT + plot_w + 15
        parts.append(
            f'<line x1="{lx}" x2="{lx + 25}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        parts.append(f'<text x="{lx + 32}" y="{ly + 4}">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out, inputs = Path(argv[0]), [Path(p) for p in argv[1:]]
    series = []
    for colour, path in zip(COLOURS, inputs, strict=False):
        result = orjson.loads(path.read_bytes())
        label = path.stem
        series += [(name, colour, dashed, points) for name, dashed, points in curves(result, label)]
    out.write_text(svg(series, "coupon-pool bench: latency by percentile, service vs reference"))
    print(f"wrote {out} ({len(series)} curves)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
