"""The upload worker's process (coupon_pool/http/upload_worker.py): stopped with the service."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import orjson
from redis import Redis

from coupon_pool.http.routes import INLINE_UPLOAD_BYTES
from coupon_pool.http.upload_worker import UploadWorker
from coupon_pool.settings import Settings
from support import free_port, wait_until
from support.factories import coupon_json
from support.redis_server import RedisServer


def test_a_service_stopped_after_a_large_upload_leaves_no_semaphore_behind(redis_server: RedisServer) -> None:
    """The worker's executor holds five POSIX semaphores; a service stopped by SIGTERM dies
    of the signal (uvicorn raises it again once shut down), so they must be released before."""
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    redis.flushall()
    url = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "REDIS_URL": redis_server.url, "PORT": url.rsplit(":", 1)[1], "LOG_LEVEL": "warning"}
    body = orjson.dumps({"coupons": [coupon_json(f"SEM{i}") for i in range(1000)]})
    assert len(body) > INLINE_UPLOAD_BYTES  # validated and stored by the worker
    with subprocess.Popen([sys.executable, "-m", "coupon_pool", "serve"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as server:  # fmt: skip
        wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, timeout=20)
        stored = httpx.post(f"{url}/v1/coupons", content=body, headers={"content-type": "application/json"},
                            timeout=60)  # fmt: skip
        server.terminate()
        _, stderr = server.communicate(timeout=60)

    assert stored.status_code == 201
    assert redis.zcard("{cp}:avail:STANDARD") == 1000
    redis.close()
    assert server.returncode == -signal.SIGTERM
    assert "leaked semaphore" not in stderr, stderr


async def test_a_worker_that_does_not_stop_in_time_is_killed(settings: Settings) -> None:
    worker = UploadWorker(settings)
    busy = worker._pool.submit(time.sleep, 60)  # a call that outlasts the shutdown timeout
    await asyncio.sleep(1)  # started: a running call is not cancelled
    processes = list(worker._pool._processes.values())
    started = time.monotonic()

    await worker.close(timeout_s=0.5)

    assert time.monotonic() - started < 10
    assert [process.is_alive() for process in processes] == [False]
    assert busy.exception(timeout=10) is not None  # the pool broke under it
