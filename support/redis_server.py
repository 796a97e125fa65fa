"""A redis-server process with the project's redis.conf, for the tests and the measurements."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

from redis import Redis as SyncRedis

from support import REPO, free_port, wait_until

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """A redis-server process with the project's redis.conf, on a free port and its own dir."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not on PATH: run `make test`, which installs it")
        self.binary = REDIS_SERVER
        self.data_dir = data_dir
        self.port = free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, str(REPO / "redis.conf"), "--port", str(self.port),
             "--dir", str(self.data_dir), "--logfile", str(self.data_dir / "redis.log"), *self.extra],
        )  # fmt: skip
        client = SyncRedis(port=self.port)
        wait_until(client.ping)
        client.close()
        return self

    def stop(self) -> None:
        """A clean shutdown: Redis flushes and fsyncs the append-only file first."""
        if self.process and self.process.poll() is None:
            with SyncRedis(port=self.port) as client, contextlib.suppress(Exception):
                client.shutdown(nosave=True)
            self.process.wait(10)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
