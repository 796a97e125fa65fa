"""The ceiling: a bare Starlette endpoint doing one FCALL per request on the same Redis.

It answers every path and method the way the service would at best: read the body, call
one tiny function (an INCR), answer JSON (201 to a POST, 200 to a GET). So the bench can also drive
it directly, e.g. to compare its client with wrk on the same endpoint. Served by the same
uvicorn as ``coupon-pool serve``, it is what the service's figures are divided by.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...pool.autopipeline import AutoPipeline
from ...pool.connection import connect
from ...settings import Settings

FUNCTION = "reference_incr"
LIBRARY = f"""#!lua name=coupon_pool_reference
redis.register_function('{FUNCTION}', function(keys, args) return redis.call('INCR', keys[1]) end)
"""
KEY = "{cp-reference}:n"


def create_reference_app(settings: Settings | None = None, *, autopipeline: bool = False) -> Starlette:
    """The ceiling; with ``autopipeline``, its FCALL goes through the service's AutoPipeline."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = connect(settings, settings.redis_max_connections, settings.redis_timeout_s)
        await redis.function_load(LIBRARY, replace=True)
        app.state.redis = redis
        app.state.pipeline = AutoPipeline(redis) if autopipeline else None
        try:
            yield
        finally:
            await redis.aclose()

    async def endpoint(request: Request) -> Response:
        await request.body()
        state = request.app.state
        if state.pipeline:
            n = await state.pipeline.run(FUNCTION.encode(), [KEY], [])
        else:
            n = await state.redis.fcall(FUNCTION, 1, KEY)
        status = 201 if request.method == "POST" else 200  # as the service answers
        return Response(orjson.dumps({"n": n}), status_code=status, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])], lifespan=lifespan)


def app() -> Starlette:
    """The ceiling, for uvicorn's --factory."""
    return create_reference_app()


def pipelined_app() -> Starlette:
    """The ceiling with auto-pipelining, for uvicorn's --factory."""
    return create_reference_app(autopipeline=True)


class ReferenceServer:
    """The reference app under uvicorn in a subprocess, on ``port`` with ``workers``."""

    def __init__(self, port: int, workers: int, redis_url: str, *, autopipeline: bool = False) -> None:
        self.url = f"http://127.0.0.1:{port}"
        name = "pipelined_app" if autopipeline else "app"
        command = [
            sys.executable, "-m", "uvicorn", f"coupon_pool.tools.bench.reference:{name}", "--factory",
            "--port", str(port), "--workers", str(workers), "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        env = {**os.environ, "REDIS_URL": redis_url}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:  # not listening yet (URLError is an OSError)
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the reference server did not start on port {port}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
