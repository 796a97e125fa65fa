"""A real Redis Cluster: redis-server in cluster mode, formed by redis-cli.

Six nodes (three masters, a replica each) on free loopback ports, each port at most
55535 (a node's cluster bus listens on its port + 10000). A short cluster-node-timeout
makes failovers take a second or two.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import cast

from redis import Redis as SyncRedis
from redis.asyncio import Redis, RedisCluster

from support import REPO

MAX_PORT = 55535
NODE_TIMEOUT_MS = 1000
CLUSTER_SHARDS = 16  # the shards of the tests' pools on a cluster


def free_cluster_port(taken: set[int]) -> int:
    """A port P at most MAX_PORT with P and P + 10000 both free on 127.0.0.1."""
    for _ in range(1000):
        port = random.randint(20000, MAX_PORT)
        if port in taken or port + 10000 in taken:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("found no free port pair for a cluster node")


def _wait(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.05)
    raise TimeoutError(f"the cluster did not {what} within {timeout} s")


class ClusterNode:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.port = port
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", str(REPO / "redis.conf"),
             "--port", str(self.port), "--dir", str(self.data_dir),
             "--logfile", str(self.data_dir / "redis.log"),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--appendonly", "no", "--save", "",
             # The other masters keep serving their slots while one fails over.
             "--cluster-require-full-coverage", "no"],
        )  # fmt: skip

    def client(self) -> SyncRedis:
        return SyncRedis(port=self.port, decode_responses=True, socket_timeout=5)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye to the cluster."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        """Nothing of a test cluster is kept: no need to wait for a clean shutdown."""
        if self.alive:
            self.kill()


class Cluster:
    """``masters`` masters with ``replicas`` replicas each, formed and covering every slot."""

    def __init__(self, data_dir: Path, masters: int = 3, replicas: int = 1) -> None:
        ports: set[int] = set()
        for _ in range(masters * (1 + replicas)):
            ports.add(free_cluster_port(ports))
        self.nodes = [ClusterNode(data_dir / str(port), port) for port in sorted(ports)]
        self.replicas = replicas

    @property
    def url(self) -> str:
        """Any live node names the cluster."""
        return f"redis://127.0.0.1:{self.live()[0].port}/0"

    def live(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive]

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            _wait(lambda n=node: n.client().ping(), 10, f"start node {node.port}")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 20) -> None:
        """Every live node says the cluster is ok, and they agree on who owns each slot."""

        def healthy() -> bool:
            views = []
            for node in self.live():
                with node.client() as c:
                    if c.cluster("info")["cluster_state"] != "ok":
                        return False
                    replication = c.info("replication")
                    if replication["role"] == "slave" and replication["master_link_status"] != "up":
                        return False  # a replica still syncing: WAIT would not count it
                    views.append(sorted((s[0], s[1], s[2][1]) for s in c.execute_command("CLUSTER SLOTS")))
            return all(v == views[0] for v in views) and sum(e - s + 1 for s, e, _ in views[0]) == 16384

        _wait(healthy, timeout, "become healthy")

    def masters(self) -> list[ClusterNode]:
        """The live masters, by port."""
        found = []
        for node in self.live():
            with node.client() as c:
                if c.info("replication")["role"] == "master":
                    found.append(node)
        return found

    def node(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def master_of_slot(self, slot: int) -> ClusterNode:
        with self.live()[0].client() as c:
            for start, end, master, *_ in c.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return self.node(int(master[1]))
        raise LookupError(f"no master owns slot {slot}")

    def flush(self) -> None:
        for node in self.masters():
            with node.client() as c:
                c.flushall()
                c.function_flush()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def cluster_client(cluster: Cluster) -> Redis:
    """A client of the cluster, typed as the service types it (connection.connect)."""
    return cast(Redis, RedisCluster.from_url(cluster.url, decode_responses=True))
