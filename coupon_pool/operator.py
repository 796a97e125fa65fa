"""What the operator commands (check, inspect) share: which Redis they read, said plainly."""

from __future__ import annotations

import os
import sys

from .settings import Settings, redacted, settings_for

MAKE_RUN_REDIS_URL = "redis://127.0.0.1:6390/0"  # the Redis `make run` starts (REDIS_PORT 6390)


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
