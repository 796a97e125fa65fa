"""``coupon-pool serve`` in a subprocess: real HTTP, real uvicorn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support import free_port, wait_until


class LiveServer:
    """``coupon-pool serve`` in a subprocess: real HTTP, real uvicorn."""

    def __init__(self, redis_url: str, log: Path | None = None, **env: str) -> None:
        """``log``: a file for the server's stdout (its JSON log lines); else they are dropped."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # No periodic purge or sweep of due holds unless a test asks for one: a session-long
        # server doing either would add keys and script calls under other tests' feet.
        environ = {**os.environ, "REDIS_URL": redis_url, "PORT": str(self.port),
                   "LOG_LEVEL": "warning", "PURGE_INTERVAL_S": "3600", "SETTLE_INTERVAL_S": "0",
                   "JOBS_INTERVAL_S": "0",
                   **env}  # fmt: skip
        with open(log or os.devnull, "wb") as stdout:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "coupon_pool", "serve"], env=environ, stdout=stdout
            )
        wait_until(lambda: httpx.get(f"{self.url}/healthz").status_code == 200, timeout=20)

    def stop(self) -> None:
        """SIGTERM, as a deployment stops it; a server that does not exit in 30 s fails the test."""
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGUSR1)  # its asyncio tasks' stacks, to stderr
            time.sleep(1)
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"coupon-pool serve on port {self.port} ignored SIGTERM for 30 s") from None
