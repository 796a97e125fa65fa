"""One app worker on a single Redis, on a Redis Cluster, and on the cluster with
REDIS_WAIT_REPLICAS=1, measured in turn by the bundled bench.

    .venv/bin/python measure/cluster_bench.py [--scenario allocate] [--rounds 3] [--duration 8]

Starts a redis-server and a six-node cluster of its own (support/cluster.py), then three
services (`coupon-pool serve`, one worker each): on the single Redis (one shard), on the
cluster (POOL_SHARDS=16), and on the cluster with each change waiting for a replica (a
namespace of its own). In each round `coupon-pool bench SCENARIO` runs against each in
turn; prints req/s and p99 per round, their medians, and the ratios to the single Redis.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # support/, when run as a file
from support.cluster import Cluster, free_cluster_port

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def serve(redis_url: str, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_cluster_port(set())
    environ = {**os.environ, "REDIS_URL": redis_url, "PORT": str(port), "LOG_LEVEL": "warning",
               "PURGE_INTERVAL_S": "3600", **env}  # fmt: skip
    process = subprocess.Popen([str(BIN / "coupon-pool"), "serve"], env=environ, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
                if r.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the service on {redis_url} did not start")


def bench(scenario: str, url: str, duration: float, first: bool) -> dict[str, float]:
    command = [
        str(BIN / "coupon-pool"),
        "bench",
        scenario,
        "--url",
        url,
        "--duration",
        str(duration),
        "--json",
    ]
    if not first:
        command.append("--into-existing-pool")
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    service = result.get("service", result)
    return {"rps": float(service["throughput"]), "p99": float(service["latency_ms"]["p99"])}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", default="allocate", choices=["allocate", "redeem", "mixed"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    single_port = free_cluster_port(set())
    single = subprocess.Popen(
        ["redis-server", str(REPO / "redis.conf"), "--port", str(single_port), "--dir", str(work),
         "--appendonly", "no", "--logfile", str(work / "single.log")],
    )  # fmt: skip
    cluster = Cluster(work / "cluster").start()
    services = []
    try:
        time.sleep(0.5)
        builds = {
            "single Redis": serve(f"redis://127.0.0.1:{single_port}/0"),
            "cluster, 16 shards": serve(cluster.url, REDIS_CLUSTER="1", POOL_SHARDS="16"),
            "cluster, WAIT 1": serve(
                cluster.url,
                REDIS_CLUSTER="1",
                POOL_SHARDS="16",
                KEY_NAMESPACE="waited",
                REDIS_WAIT_REPLICAS="1",
            ),
        }
        services = [process for process, _ in builds.values()]
        results: dict[str, list[dict[str, float]]] = {name: [] for name in builds}
        for n in range(args.rounds):
            for name, (_, url) in builds.items():
                results[name].append(bench(args.scenario, url, args.duration, first=n == 0))
                print(f"round {n + 1} {name:<20} {results[name][-1]['rps']:>8,.0f} req/s  "
                      f"p99 {results[name][-1]['p99']:.1f} ms", flush=True)  # fmt: skip
        base = statistics.median(r["rps"] for r in results["single Redis"])
        for name, rounds in results.items():
            rps = statistics.median(r["rps"] for r in rounds)
            p99 = statistics.median(r["p99"] for r in rounds)
            print(
                f"median {name:<20} {rps:>8,.0f} req/s  p99 {p99:.1f} ms  {rps / base:.2f}x the single Redis"
            )
    finally:
        for process in services:
            process.terminate()
            process.wait(30)
        cluster.stop()
        single.kill()


if __name__ == "__main__":
    main()
