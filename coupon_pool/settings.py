"""Service configuration, read from the environment once at start-up."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from .megadeal import MegadealLimits

KEY_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")  # RFC 6750 token68, and long

_NAMESPACE = re.compile(r"[a-z0-9_-]{1,32}")


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_namespace: str = "cp"
    redis_max_connections: int = 64
    redis_timeout_s: float = 2.0
    upload_chunk_size: int = 100
    body_timeout_s: float = 10.0  # to receive a request's body, once its headers are in
    shutdown_timeout_s: float = 15.0  # for requests in flight to finish after SIGTERM
    max_body_bytes: int = 32 * 1024 * 1024  # an upload's; 50,000 coupons take 7-15 MB of JSON
    audit_max_len: int = 100_000
    purge_interval_s: float = 60.0
    purge_batch_size: int = 1000
    megadeal: MegadealLimits = field(default_factory=MegadealLimits)
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    log_level: str = "info"
    # Secrets: never in a repr, a log line or an error message.
    admin_keys: tuple[str, ...] = field(default=(), repr=False)
    client_keys: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables; unset ones keep their defaults."""
        env = os.environ if env is None else env
        default = cls()
        settings = cls(
            redis_url=env.get("REDIS_URL", default.redis_url),
            key_namespace=env.get("KEY_NAMESPACE", default.key_namespace),
            redis_max_connections=_int(env, "REDIS_MAX_CONNECTIONS", default.redis_max_connections),
            redis_timeout_s=_float(env, "REDIS_TIMEOUT_S", default.redis_timeout_s),
            upload_chunk_size=_int(env, "UPLOAD_CHUNK_SIZE", default.upload_chunk_size),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", default.max_body_bytes),
            body_timeout_s=_float(env, "BODY_TIMEOUT_S", default.body_timeout_s),
            shutdown_timeout_s=_float(env, "SHUTDOWN_TIMEOUT_S", default.shutdown_timeout_s),
            audit_max_len=_int(env, "AUDIT_MAX_LEN", default.audit_max_len),
            purge_interval_s=_float(env, "PURGE_INTERVAL_S", default.purge_interval_s),
            purge_batch_size=_int(env, "PURGE_BATCH_SIZE", default.purge_batch_size),
            megadeal=MegadealLimits(
                max_concurrent=_int(env, "MEGADEAL_MAX_CONCURRENT", default.megadeal.max_concurrent),
                rate_per_s=_int(env, "MEGADEAL_RATE_PER_S", default.megadeal.rate_per_s),
                max_wait_s=_float(env, "MEGADEAL_MAX_WAIT_S", default.megadeal.max_wait_s),
                lease_s=_float(env, "MEGADEAL_LEASE_S", default.megadeal.lease_s),
                max_waiters=_int(env, "MEGADEAL_MAX_WAITERS", default.megadeal.max_waiters),
            ),
            host=env.get("HOST", default.host),
            port=_int(env, "PORT", default.port),
            workers=_int(env, "WORKERS", default.workers),
            log_level=env.get("LOG_LEVEL", default.log_level).lower(),
            admin_keys=_keys(env, "COUPON_POOL_ADMIN_KEYS"),
            client_keys=_keys(env, "COUPON_POOL_CLIENT_KEYS"),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse values that would only fail later, and more obscurely."""
        if not _NAMESPACE.fullmatch(self.key_namespace):
            raise SettingsError("KEY_NAMESPACE must be 1-32 characters of a-z 0-9 _ -")
        for name, keys in (
            ("COUPON_POOL_ADMIN_KEYS", self.admin_keys),
            ("COUPON_POOL_CLIENT_KEYS", self.client_keys),
        ):
            for i, key in enumerate(keys, 1):
                if not KEY_PATTERN.fullmatch(key):  # the key itself is never echoed
                    raise SettingsError(
                        f"{name}: key {i} must be 16-256 characters of A-Z a-z 0-9 . _ ~ + / = -"
                    )
        if set(self.admin_keys) & set(self.client_keys):
            raise SettingsError("a key is in both COUPON_POOL_ADMIN_KEYS and COUPON_POOL_CLIENT_KEYS")
        for name, value in (
            ("REDIS_MAX_CONNECTIONS", self.redis_max_connections),
            ("UPLOAD_CHUNK_SIZE", self.upload_chunk_size),
            ("MAX_BODY_BYTES", self.max_body_bytes),
            ("AUDIT_MAX_LEN", self.audit_max_len),
            ("PURGE_BATCH_SIZE", self.purge_batch_size),
            ("WORKERS", self.workers),
            ("MEGADEAL_MAX_CONCURRENT", self.megadeal.max_concurrent),
            ("MEGADEAL_RATE_PER_S", self.megadeal.rate_per_s),
            ("MEGADEAL_MAX_WAITERS", self.megadeal.max_waiters),
        ):
            if value < 1:
                raise SettingsError(f"{name} must be at least 1, not {value}")
        for name, seconds in (
            ("REDIS_TIMEOUT_S", self.redis_timeout_s),
            ("PURGE_INTERVAL_S", self.purge_interval_s),
            ("BODY_TIMEOUT_S", self.body_timeout_s),
            ("SHUTDOWN_TIMEOUT_S", self.shutdown_timeout_s),
            ("MEGADEAL_MAX_WAIT_S", self.megadeal.max_wait_s),
            ("MEGADEAL_LEASE_S", self.megadeal.lease_s),
        ):
            if not seconds > 0:
                raise SettingsError(f"{name} must be positive, not {seconds}")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, not {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {raw!r}") from None


def _keys(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list of API keys; blanks around and between commas are ignored."""
    return tuple(k.strip() for k in env.get(name, "").split(",") if k.strip())


def settings_for(command: str) -> Settings | None:
    """Settings.from_env() for a command line; on a bad value, say so on stderr and give None."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return None
