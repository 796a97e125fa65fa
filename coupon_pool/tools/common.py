"""What the command-line tools share.

The operator commands (check, inspect) read Redis and say which; the callers' commands
(upload, bench) call the service, found alike; and all write progress lines alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import os
import re
import sys
import urllib.parse
from typing import Any, NamedTuple, TextIO

from ..models import BATCH_ID_PATTERN
from ..pool.codec import holder_state as _holder_state
from ..settings import Settings, SettingsError, redacted

MAKE_RUN_REDIS_URL = "redis://127.0.0.1:6390/0"  # the Redis `make run` starts (REDIS_PORT 6390)
URL_ENV, ADMIN_KEY_ENV = "COUPON_POOL_URL", "COUPON_POOL_ADMIN_KEY"  # one of COUPON_POOL_ADMIN_KEYS


def service_url() -> str:
    """The service a caller's command calls: COUPON_POOL_URL, else this host's PORT (8080)."""
    port = os.environ.get("PORT", "8080")
    return os.environ.get(URL_ENV) or f"http://127.0.0.1:{port if port.isdigit() else 8080}"


class ServiceUrl(NamedTuple):
    """Where a caller's command finds the service: http(s)://host[:port][/prefix]."""

    scheme: str
    host: str
    port: int | None
    prefix: str  # the path the routes' paths follow ("" at the root)

    @classmethod
    def at(cls, url: str) -> ServiceUrl:
        """ValueError for anything but an http(s) URL with a host."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"--url must be http(s)://host[:port], not {url!r}")
        return cls(parsed.scheme, parsed.hostname, parsed.port, parsed.path.rstrip("/"))

    def connection(self, timeout_s: float) -> http.client.HTTPConnection:
        """A connection to it (opened by its first request)."""
        kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=timeout_s)


class ProgressLine:
    """Progress on stderr: one line redrawn in place on a terminal, else a line each."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty()

    def tick(self, line: str) -> None:
        self.stream.write(f"\r{line}\x1b[K" if self.terminal else f"{line}\n")
        self.stream.flush()

    def end(self) -> None:
        """After the last tick: a terminal's line is kept."""
        if self.terminal:
            self.stream.write("\n")
            self.stream.flush()


MAX_PROGRESS_EVERY_S = 3600.0


def batch_id(text: str) -> str:
    """An argparse type: a batch id as the service takes one (models.BatchId)."""
    if not re.fullmatch(BATCH_ID_PATTERN, text):
        raise argparse.ArgumentTypeError("must be 1-64 of A-Z a-z 0-9 _ . -")
    return text


def progress_every(text: str) -> float:
    """``--progress-every``: seconds between progress lines off a terminal, 0 to an hour."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_PROGRESS_EVERY_S:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to {MAX_PROGRESS_EVERY_S:.0f}")
    return seconds


def announce(command: str, settings: Settings) -> None:
    """On stderr: the Redis and namespace ``command`` reads, loudly when REDIS_URL is unset."""
    print(
        f"{command}: reading {redacted(settings.redis_url)}, namespace {settings.key_namespace}",
        file=sys.stderr,
    )
    if "REDIS_URL" not in os.environ:
        print(
            f"{command}: REDIS_URL is not set, so this is the service's default, NOT the Redis `make run` "
            f"starts: for that one, set REDIS_URL={MAKE_RUN_REDIS_URL}",
            file=sys.stderr,
        )


def operator_settings(command: str) -> Settings | None:
    """The environment's settings for ``command``, announced (announce); None if refused."""
    settings = settings_for(command)
    if settings is not None:
        announce(command, settings)
    return settings


def settings_for(command: str, **overrides: Any) -> Settings | None:
    """Settings.from_env() for a command line, with ``overrides`` (its options, checked alike);
    on a bad value, say so on stderr and give None."""
    try:
        return dataclasses.replace(Settings.from_env(), **overrides)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"{command}: {problem}", file=sys.stderr)
        return None


def holder_state(state: str | None) -> tuple[str, str, str]:
    """codec.holder_state, but a missing or malformed record reads as ("", "?", ""): the
    checks report it rather than stop."""
    try:
        return _holder_state(state) if state is not None else ("", "?", "")
    except ValueError:
        return "", "?", ""
