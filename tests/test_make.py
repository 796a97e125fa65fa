"""`make run` in the foreground and `make stop`, as a new user meets them (own ports and data)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
import redis
from conftest import free_port, wait_until

REPO = Path(__file__).resolve().parent.parent


def make(target: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", target], cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


def test_make_stop_stops_what_make_run_started_and_is_quiet_after(tmp_path: Path) -> None:
    redis_port, port = free_port(), free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "REDIS_PORT": str(redis_port), "PORT": str(port),
           "LOG_LEVEL": "warning"}  # fmt: skip
    for inherited in ("REDIS_URL", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"):  # as typed in a shell, not under make
        env.pop(inherited, None)
    with open(tmp_path / "run.log", "w") as log:
        run = subprocess.Popen(["make", "run"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200, timeout=60)
        assert redis.Redis(port=redis_port).ping()

        stopped = make("stop", env)

        assert stopped.returncode == 0, stopped.stderr
        lines = stopped.stdout.splitlines()
        assert [line.split(" (pid")[0] for line in lines] == [
            "stop: the service",
            "stop: the project-local Redis",
        ]
        assert run.wait(timeout=10) is not None  # make run, in the foreground, returned
        with pytest.raises(httpx.ConnectError):  # nothing listens any more
            httpx.get(f"http://127.0.0.1:{port}/healthz")
        again = make("stop", env)
        assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    finally:
        if run.poll() is None:
            run.kill()
        make("stop", env)


def test_make_run_refuses_a_redis_port_out_of_range_before_starting_anything(tmp_path: Path) -> None:
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "REDIS_PORT": "70000"}
    env.pop("REDIS_URL", None)
    done = subprocess.run([str(REPO / "scripts" / "run.sh")], env=env, capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip

    assert done.returncode == 2
    assert done.stderr == "run: REDIS_PORT must be 1 to 65,535, not '70000'\n"
    assert not (tmp_path / "data" / "redis").exists()
