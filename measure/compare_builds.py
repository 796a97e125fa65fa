"""Compare this checkout's service with an older revision's, in one run, builds alternated.

    .venv/bin/python measure/compare_builds.py REV [--scenario allocate] [--rounds 3] [--duration 8]
    .venv/bin/python measure/compare_builds.py REV --workers 2    # both services and the ceiling on 2 workers
    .venv/bin/python measure/compare_builds.py HEAD --new-keyed   # what an Idempotency-Key costs
    .venv/bin/python measure/compare_builds.py HEAD --new-hold-s 600         # a held allocation
    .venv/bin/python measure/compare_builds.py HEAD --new-scenario validate  # a validation
    .venv/bin/python measure/compare_builds.py HEAD --new-env WEBHOOK_URL=...  # a setting's cost
    .venv/bin/python measure/compare_builds.py REV --env WEBHOOK_URL=... --env WEBHOOK_SECRET=...
                                                   # both builds with a setting

Starts a Redis of its own (redis.conf, a temporary directory, a free port), then the
service of REV (a `git worktree` in a temporary directory) and this checkout's, each in a
namespace of its own, each started with `python -P` from its own tree and checked to
import coupon_pool from it. In turn (REV first, then this checkout first, and so on),
`coupon-pool bench SCENARIO --reference --pipelined-reference` runs against each (this
checkout's bench and pipelined ceiling for both). Prints, per
build, the service's req/s and its ratio to the ceiling in each round, their medians, and
new/old. The ratio is the figure to compare: the ceiling run beside each measurement
absorbs the noise of a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str) -> None:
    for _ in range(200):
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def check_source(build: str, tree: Path, env: dict[str, str]) -> None:
    """Refuse to measure unless the server of ``build`` will import coupon_pool from ``tree``
    (the same interpreter, flags, environment and working directory as the server's)."""
    done = subprocess.run([PYTHON, "-P", "-c", "import coupon_pool; print(coupon_pool.__file__)"],
                          env=env, cwd=tree, capture_output=True, text=True, check=True)  # fmt: skip
    source = Path(done.stdout.strip()).resolve()
    if not source.is_relative_to(tree.resolve()):
        raise RuntimeError(f"the {build} build would import coupon_pool from {source}, not from {tree}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rev", help="the older revision (a commit, tag or branch)")
    parser.add_argument("--scenario", default="allocate", choices=("allocate", "redeem"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--slices", type=int, default=1,
                        help="each round's bench alternates the service and its ceiling this many "
                             "times, DURATION/SLICES seconds each, and keeps the slice with the median "
                             "ratio")  # fmt: skip
    parser.add_argument("--workers", type=int, default=1,
                        help="uvicorn workers of each service (WORKERS) and of the ceiling")  # fmt: skip
    parser.add_argument("--prepare", type=int, default=300_000, help="redeem: allocations made beforehand")
    parser.add_argument("--new-keyed", action="store_true",
                        help="allocate: the new build's allocations carry an Idempotency-Key each "
                             "(with REV = HEAD: the cost of the header)")  # fmt: skip
    parser.add_argument("--new-hold-s", type=int,
                        help="allocate: the new build's allocations hold their coupon this long")  # fmt: skip
    parser.add_argument("--new-scenario", choices=("allocate", "redeem", "validate"),
                        help="the new build's scenario, when not --scenario's (each build's ratio to "
                             "its own ceiling run is what compares)")  # fmt: skip
    parser.add_argument("--new-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of the new build's service only (repeatable): with REV = HEAD, "
                             "what the setting costs")  # fmt: skip
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of both builds' services (repeatable): what a change costs "
                             "with the setting on")  # fmt: skip
    args = parser.parse_args()
    if any("=" not in item for item in args.new_env + args.env):
        parser.error("--new-env and --env take NAME=VALUE")
    new_env = dict(item.split("=", 1) for item in args.new_env)
    both_env = dict(item.split("=", 1) for item in args.env)
    if args.slices < 1 or args.slices % 2 == 0:
        parser.error("--slices must be odd: the bench keeps the middle one")

    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_tree), args.rev],
                       check=True, capture_output=True)  # fmt: skip
        redis_port = free_port()
        redis = subprocess.Popen(
            ["redis-server", str(REPO / "redis.conf"), "--port", str(redis_port), "--dir", tmp,
             "--logfile", str(Path(tmp) / "redis.log")],
        )  # fmt: skip
        servers: list[subprocess.Popen[bytes]] = []
        try:
            time.sleep(0.5)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            urls = {}
            for build, extra_path in (("old", str(old_tree)), ("new", str(REPO))):
                port = free_port()
                env = {**os.environ, "REDIS_URL": redis_url, "KEY_NAMESPACE": f"cmp-{build}",
                       "PORT": str(port), "LOG_LEVEL": "warning", "PYTHONPATH": extra_path,
                       "WORKERS": str(args.workers), **both_env,
                       **(new_env if build == "new" else {})}  # fmt: skip
                tree = Path(extra_path)
                check_source(build, tree, env)
                # -P and the build's tree as the working directory: `python -m` would otherwise put
                # the current directory (this checkout, when run from its root) ahead of PYTHONPATH.
                command = [PYTHON, "-P", "-m", "coupon_pool", "serve"]
                servers.append(subprocess.Popen(command, env=env, cwd=tree, stdout=subprocess.DEVNULL))
                urls[build] = f"http://127.0.0.1:{port}"
                wait_for(f"{urls[build]}/healthz")
            results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
            for n in range(args.rounds):
                # The order turns each round, so a drift over the run (the data set growing,
                # a background save) falls on both builds alike.
                for build in ("old", "new") if n % 2 == 0 else ("new", "old"):
                    scenario = (args.new_scenario or args.scenario) if build == "new" else args.scenario
                    command = [
                        PYTHON, "-m", "coupon_pool.tools.bench", scenario, "--url", urls[build],
                        "--redis-url", redis_url, "--reference", "--pipelined-reference",
                        "--duration", str(args.duration / args.slices), "--rounds", str(args.slices),
                        "--json", "--quiet", "--into-existing-pool", "--workers", str(args.workers),
                    ]  # fmt: skip
                    if scenario == "redeem":
                        command += ["--prepare", str(args.prepare)]
                    if args.new_keyed and build == "new":
                        command.append("--idempotency-keys")
                    if args.new_hold_s and build == "new":
                        command += ["--hold-s", str(args.new_hold_s)]
                    env = {**os.environ, "PYTHONPATH": str(REPO)}
                    done = subprocess.run(command, env=env, capture_output=True, check=True)
                    result = json.loads(done.stdout)
                    results[build].append({
                        "service": result["service"]["throughput"],
                        "reference": result["reference"]["throughput"],
                        "ratio": result["ratios"]["throughput"],
                        "p99_ms": result["service"]["latency_ms"]["p99"],
                    })  # fmt: skip
                    print(build, results[build][-1], file=sys.stderr, flush=True)
        finally:
            for server in servers:
                server.terminate()
                server.wait(30)
            redis.terminate()
            redis.wait(10)
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)], check=False
            )

    summary: dict[str, object] = {"scenario": args.scenario, "old_rev": args.rev, "new_keyed": args.new_keyed,
                                  "new_hold_s": args.new_hold_s, "new_scenario": args.new_scenario,
                                  "new_env": sorted(new_env), "env": sorted(both_env),
                                  "workers": args.workers, "slices": args.slices,
                                  "rounds": results}  # fmt: skip
    for build in ("old", "new"):
        for key in ("service", "ratio", "p99_ms"):
            summary[f"{build}_median_{key}"] = statistics.median(r[key] for r in results[build])
    summary["new_over_old_ratio"] = round(summary["new_median_ratio"] / summary["old_median_ratio"], 3)  # type: ignore[operator]
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
