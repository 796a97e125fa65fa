"""Service configuration, read from the environment once at start-up.

Each setting is declared once, as a field of ``Settings``: its environment variable, its
default, how its text is parsed and what it must satisfy. README's configuration table
lists the same variables (a test checks it does).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

KEY_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")  # RFC 6750 token68, and long
_NAMESPACE = re.compile(r"[a-z0-9_-]{1,32}")
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class SettingsError(ValueError):
    """Environment variables hold values the service cannot use: one line per problem."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _number(kind: type[int] | type[float]) -> Callable[[str, str], Any]:
    noun = "an integer" if kind is int else "a number"

    def parse(name: str, raw: str) -> Any:
        try:
            return kind(raw)
        except ValueError:
            raise SettingsError(f"{name} must be {noun}, not {raw!r}") from None

    return parse


def _text(name: str, raw: str) -> str:
    return raw


def _lower(name: str, raw: str) -> str:
    return raw.lower()


def _flag(name: str, raw: str) -> bool:
    if raw.strip().lower() in ("1", "true", "yes"):
        return True
    if raw.strip().lower() in ("0", "false", "no", ""):
        return False
    raise SettingsError(f"{name} must be 1 or 0 (true or false), not {raw!r}")


def _keys(name: str, raw: str) -> tuple[str, ...]:
    """A comma-separated list of API keys; blanks around and between commas are ignored."""
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def _valid_keys(keys: tuple[str, ...]) -> str | None:
    for i, key in enumerate(keys, 1):
        if not KEY_PATTERN.fullmatch(key):
            return f"key {i} must be 16-256 characters of A-Z a-z 0-9 . _ ~ + / = -"
    return None


def _at_least_1(value: int) -> str | None:
    return None if value >= 1 else "must be at least 1"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


def _at_least_0(value: int) -> str | None:
    return None if value >= 0 else "must be 0 or more"


MAX_POOL_SHARDS = 256  # a read across the pool (stats, a user's coupons) costs a call per slot


def _shards(value: int) -> str | None:
    return None if 1 <= value <= MAX_POOL_SHARDS else f"must be 1 to {MAX_POOL_SHARDS}"


def _lookup_rate(value: float) -> str | None:
    return None if 0.01 <= value <= 100_000 else "must be 0.01 to 100000 (failed lookups a second)"


def _lookup_burst(value: int) -> str | None:
    return None if 1 <= value <= 1_000_000 else "must be 1 to 1000000"


def _share(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be above 0 and at most 1"


def _namespace(value: str) -> str | None:
    return None if _NAMESPACE.fullmatch(value) else "must be 1-32 characters of a-z 0-9 _ -"


_URL_SCHEMES = ("redis", "rediss", "unix")


def _redis_url(value: str) -> str | None:
    scheme, _, rest = value.partition("://")
    if scheme not in _URL_SCHEMES or not rest:
        return "must be redis://[[user]:password@]host[:port][/db] (or rediss://, unix://)"
    if any(c.isspace() or c in '<>"{}|\\^`' for c in value):
        # Characters a URL cannot hold unencoded: most likely a placeholder left in .env.
        return 'holds a character a URL cannot (a space or one of < > " { } | \\ ^ `): is it a placeholder?'
    return None


def redacted(url: str) -> str:
    """A Redis URL without its password, for messages."""
    scheme, found, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not found or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _log_level(value: str) -> str | None:
    return None if value in _LOG_LEVELS else "must be one of " + ", ".join(_LOG_LEVELS)


def env(
    name: str,
    default: Any,
    parse: Callable[[str, str], Any],
    check: Callable[[Any], str | None] | None = None,
    *,
    secret: bool = False,
) -> Any:
    """A Settings field read from the variable ``name``: parsed by ``parse``, then checked."""
    metadata = {"env": name, "parse": parse, "check": check, "secret": secret}
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


_int, _float = _number(int), _number(float)


@dataclass(frozen=True)
class MegadealLimits:
    max_concurrent: int = 5
    rate_per_s: int = 10
    max_wait_s: float = 10.0
    lease_s: float = 5.0  # a slot whose holder died frees itself after this long
    max_waiters: int = 500  # waiting requests per app process; more are refused at once


@dataclass(frozen=True)
class Settings:
    redis_url: str = env("REDIS_URL", "redis://127.0.0.1:6379/0", _text, _redis_url)
    key_namespace: str = env("KEY_NAMESPACE", "cp", _text, _namespace)
    # REDIS_URL names any node of a Redis Cluster (the client learns the rest from it).
    redis_cluster: bool = env("REDIS_CLUSTER", False, _flag)
    # The FREE and STANDARD pools are split into this many shards, a hash tag each; fixed
    # once the pool holds data (the service refuses to start on another count).
    pool_shards: int = env("POOL_SHARDS", 1, _int, _shards)
    # After each change, wait until this many replicas have it (WAIT); 0: do not wait.
    redis_wait_replicas: int = env("REDIS_WAIT_REPLICAS", 0, _int, _at_least_0)
    # How long that wait may take; a change not replicated by then answers 503.
    redis_wait_timeout_ms: int = env("REDIS_WAIT_TIMEOUT_MS", 1000, _int, _at_least_1)
    redis_max_connections: int = env("REDIS_MAX_CONNECTIONS", 64, _int, _at_least_1)
    redis_timeout_s: float = env("REDIS_TIMEOUT_S", 2.0, _float, _positive)
    upload_chunk_size: int = env("UPLOAD_CHUNK_SIZE", 100, _int, _at_least_1)
    # Uploads stop when Redis uses this share of its maxmemory, so allocations and
    # redemptions (which need a little memory each) go on after uploads have filled it;
    # 1: no share of their own (uploads then run until Redis refuses writes).
    upload_memory_share: float = env("UPLOAD_MEMORY_SHARE", 0.9, _float, _share)
    # To receive a request's body, once its headers are in.
    body_timeout_s: float = env("BODY_TIMEOUT_S", 10.0, _float, _positive)
    # For requests in flight to finish after SIGTERM.
    shutdown_timeout_s: float = env("SHUTDOWN_TIMEOUT_S", 15.0, _float, _positive)
    # An upload's; 50,000 coupons take 7-15 MB of JSON.
    max_body_bytes: int = env("MAX_BODY_BYTES", 32 * 1024 * 1024, _int, _at_least_1)
    # Uploads read or written at once per process (each holds its body, up to MAX_BODY_BYTES).
    max_uploads: int = env("MAX_UPLOADS", 2, _int, _at_least_1)
    audit_max_len: int = env("AUDIT_MAX_LEN", 100_000, _int, _at_least_1)
    # Coupons of one type a user may hold at once (releases give one back); 0: no limit.
    max_allocations_per_user: int = env("MAX_ALLOCATIONS_PER_USER", 0, _int, _at_least_0)
    # How long the answer to a request with an Idempotency-Key is kept for its retries.
    idempotency_ttl_s: int = env("IDEMPOTENCY_TTL_S", 86_400, _int, _at_least_1)
    # A caller's budget of lookups that fail (a code that does not exist, or is not the
    # user's): refill per second and size; past it, 429 too_many_failed_lookups.
    failed_lookups_per_s: float = env("FAILED_LOOKUPS_PER_S", 10.0, _float, _lookup_rate)
    failed_lookup_burst: int = env("FAILED_LOOKUP_BURST", 100, _int, _lookup_burst)
    purge_interval_s: float = env("PURGE_INTERVAL_S", 60.0, _float, _positive)
    purge_batch_size: int = env("PURGE_BATCH_SIZE", 1000, _int, _at_least_1)
    megadeal_max_concurrent: int = env("MEGADEAL_MAX_CONCURRENT", 5, _int, _at_least_1)
    megadeal_rate_per_s: int = env("MEGADEAL_RATE_PER_S", 10, _int, _at_least_1)
    megadeal_max_wait_s: float = env("MEGADEAL_MAX_WAIT_S", 10.0, _float, _positive)
    megadeal_lease_s: float = env("MEGADEAL_LEASE_S", 5.0, _float, _positive)
    megadeal_max_waiters: int = env("MEGADEAL_MAX_WAITERS", 500, _int, _at_least_1)
    # Connections (server.py): idle limit, headers' deadline and size, how many at once.
    keep_alive_s: float = env("KEEP_ALIVE_S", 5.0, _float, _positive)
    header_timeout_s: float = env("HEADER_TIMEOUT_S", 10.0, _float, _positive)
    max_header_bytes: int = env("MAX_HEADER_BYTES", 16 * 1024, _int, _at_least_1)
    max_connections: int = env("MAX_CONNECTIONS", 4096, _int, _at_least_1)
    host: str = env("HOST", "127.0.0.1", _text)
    port: int = env("PORT", 8080, _int, _at_least_1)
    workers: int = env("WORKERS", 1, _int, _at_least_1)
    log_level: str = env("LOG_LEVEL", "info", _lower, _log_level)
    # Secrets: never in a repr, a log line or an error message.
    admin_keys: tuple[str, ...] = env("COUPON_POOL_ADMIN_KEYS", (), _keys, _valid_keys, secret=True)
    client_keys: tuple[str, ...] = env("COUPON_POOL_CLIENT_KEYS", (), _keys, _valid_keys, secret=True)

    def __post_init__(self) -> None:
        """Refuse values that would only fail later, and more obscurely: every one at once."""
        problems = []
        for f in dataclasses.fields(self):
            check = f.metadata["check"]
            value = getattr(self, f.name)
            problem = check(value) if check else None
            if problem:  # a secret is never echoed, nor a URL's password
                shown = (
                    ""
                    if f.metadata["secret"]
                    else f", not {redacted(value) if f.name == 'redis_url' else value!r}"
                )
                problems.append(f"{f.metadata['env']}: {problem}{shown}")
        if set(self.admin_keys) & set(self.client_keys):
            problems.append("a key is in both COUPON_POOL_ADMIN_KEYS and COUPON_POOL_CLIENT_KEYS")
        if problems:
            raise SettingsError(*problems)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables; unset ones keep their defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None:
                try:
                    values[f.name] = f.metadata["parse"](f.metadata["env"], raw)
                except SettingsError as exc:
                    problems += exc.problems
        try:
            settings = cls(**values)
        except SettingsError as exc:
            problems += exc.problems
        if problems:
            raise SettingsError(*problems)
        return settings

    def described(self) -> list[str]:
        """``VARIABLE=value`` per setting, as the service reads them: secrets counted, not shown."""
        lines = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"]:
                shown = f"({len(value)} key{'s' if len(value) != 1 else ''})"
            elif f.name == "redis_url":
                shown = redacted(value)
            else:
                shown = str(value)
            lines.append(f"{f.metadata['env']}={shown}")
        return lines

    @classmethod
    def variables(cls) -> list[str]:
        """Every environment variable the service reads."""
        return [f.metadata["env"] for f in dataclasses.fields(cls)]

    @property
    def megadeal(self) -> MegadealLimits:
        return MegadealLimits(
            max_concurrent=self.megadeal_max_concurrent,
            rate_per_s=self.megadeal_rate_per_s,
            max_wait_s=self.megadeal_max_wait_s,
            lease_s=self.megadeal_lease_s,
            max_waiters=self.megadeal_max_waiters,
        )


def settings_for(command: str) -> Settings | None:
    """Settings.from_env() for a command line; on a bad value, say so on stderr and give None."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"{command}: {problem}", file=sys.stderr)
        return None
