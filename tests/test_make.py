"""`make run` in the foreground and `make stop`, as a new user meets them (own ports and data)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from support import REPO, free_port, wait_until


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


def test_make_run_bootstraps_without_npm_or_chromium_and_make_test_asks_for_them(tmp_path: Path) -> None:
    """scripts/bootstrap.sh in a copy of the checkout whose .venv is ready, on a PATH with
    python3, redis-server and the shell's tools but no npm, Chromium or apt-get."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "requirements").mkdir()
    for name in ("scripts/bootstrap.sh", "pyproject.toml", "requirements/dev.lock"):
        (tmp_path / name).write_bytes((REPO / name).read_bytes())
    (tmp_path / "scripts" / "bootstrap.sh").chmod(0o755)
    bin_dir, venv = tmp_path / "bin", tmp_path / ".venv" / "bin"
    bin_dir.mkdir()
    venv.mkdir(parents=True)
    for tool in ("bash", "cat", "cksum", "cut", "id", "dirname"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or tool)
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))  # 3.11 or newer
    (bin_dir / "redis-server").write_text("#!/bin/sh\n")
    (bin_dir / "redis-server").chmod(0o755)
    (venv / "python").symlink_to(bin_dir / "python3")
    checksum = subprocess.run("cat pyproject.toml requirements/dev.lock | cksum", shell=True, cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.split()[0]  # fmt: skip
    (tmp_path / ".venv" / f".installed-{checksum}").touch()
    env = {"PATH": str(bin_dir), "CHROMIUM": str(tmp_path / "no-chromium")}

    def bootstrap(*args: str) -> subprocess.CompletedProcess[str]:
        command = [str(tmp_path / "scripts" / "bootstrap.sh"), *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)

    for_run = bootstrap()
    assert (for_run.returncode, for_run.stderr) == (0, "")
    for_tests = bootstrap("--test")
    assert for_tests.returncode == 1
    assert "chromium is missing" in for_tests.stderr
