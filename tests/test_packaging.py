"""The image's inputs: pinned dependencies shared with make run and CI, and a closed build context."""

from __future__ import annotations

import re

from support import REPO

PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^ ;]+)", re.MULTILINE)


def pins(lock: str) -> dict[str, str]:
    text = (REPO / "requirements" / lock).read_text()
    return {name.lower().replace("_", "-"): version for name, version in PIN.findall(text)}


def test_the_image_runs_on_the_versions_the_tests_ran_on() -> None:
    runtime, dev = pins("runtime.lock"), pins("dev.lock")

    assert {"starlette", "uvicorn", "redis", "pydantic", "orjson"} <= set(runtime)
    assert {name: dev.get(name) for name in runtime} == runtime
    assert "requirements/dev.lock" in (REPO / "scripts" / "bootstrap.sh").read_text()
    assert "-r requirements/runtime.lock" in (REPO / "Dockerfile").read_text()


def test_every_dependency_of_the_package_is_pinned() -> None:
    declared = re.findall(r'^    "([A-Za-z0-9_-]+)', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    dev = pins("dev.lock")
    assert [name for name in declared if name.lower().replace("_", "-") not in dev] == []


def test_the_build_context_holds_only_what_the_image_is_built_from() -> None:
    ignore = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = re.findall(r"^COPY (?!--from)(.+) \S+$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    copied = [source for line in sources for source in line.split()]

    assert ignore[0] == "*"  # everything is left out but what is named: .env, .git, .venv, tests
    assert set(copied) == allowed
