"""Service configuration, read from the environment once at start-up.

Each setting is declared once, as a field of ``Settings``: its environment variable, its
default, how its text is parsed and what it must satisfy. README's configuration table
lists the same variables (a test checks it does).
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import json
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from .audit import OPS

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
    if len(keys) > MAX_KEYS:
        return f"at most {MAX_KEYS} keys, not {len(keys)}"
    for i, key in enumerate(keys, 1):
        if not KEY_PATTERN.fullmatch(key):
            return f"key {i} must be 16-256 characters of A-Z a-z 0-9 . _ ~ + / = -"
    return None


@dataclass(frozen=True)
class Range:
    """A check that a number lies from ``low`` to ``high``, ``low`` itself excluded when
    ``above``; README's configuration table states each as ``str()`` gives it."""

    low: float
    high: float
    above: bool = False

    def __call__(self, value: float) -> str | None:
        fits = (value > self.low if self.above else value >= self.low) and value <= self.high
        return None if fits else f"must be {self}"  # NaN fits nowhere

    def __str__(self) -> str:
        low, high = _figure(self.low), _figure(self.high)
        return f"above {low} and at most {high}" if self.above else f"{low} to {high}"


def _figure(number: float) -> str:
    return f"{int(number):,}" if number == int(number) else f"{number:,}"


MAX_POOL_SHARDS = 256  # a read across the pool (stats, a user's coupons) costs a call per slot
MAX_KEYS = 100  # per list: every request's key is compared with each configured one
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")  # RFC 1123


def _host(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOST_NAME.fullmatch(value):
            return "must be an IP address or a host name (letters, digits, - and .)"
    return None


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


_URLS = ("redis_url", "webhook_url")  # shown without their password


def redacted(url: str) -> str:
    """A Redis (or webhook) URL without its password, for messages."""
    scheme, found, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not found or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _log_level(value: str) -> str | None:
    return None if value in _LOG_LEVELS else "must be one of " + ", ".join(_LOG_LEVELS)


# Pool-low events (pool/levels.py): a type's threshold, "<n>" available coupons or "<n>m"
# minutes of supply at the current allocation rate; empty: off for that type.
_THRESHOLD = re.compile(r"([0-9]{1,10})(m?)")
MAX_LOW_COUNT = 1_000_000_000
MAX_LOW_MINUTES = 1440


def _threshold(value: str) -> str | None:
    found = _THRESHOLD.fullmatch(value)
    if value == "" or (found and not found[2] and int(found[1]) <= MAX_LOW_COUNT):
        return None
    if found and found[2] and 1 <= int(found[1]) <= MAX_LOW_MINUTES:
        return None
    return (
        f"must be a count of available coupons, 0 to {MAX_LOW_COUNT:,}, or minutes of supply, "
        f"1m to {MAX_LOW_MINUTES:,}m (empty: off)"
    )


# Webhooks (coupon_pool/webhooks.py, http/delivery.py): the endpoint of WEBHOOK_URL ("default"),
# and up to MAX_HOOKS more, named, in WEBHOOK_ENDPOINTS; off while both are empty.
_WEBHOOK_URL_MAX = 2048
_SECRET = re.compile(r"[\x21-\x7e]{16,256}")  # printable ASCII, no blank


def _url_problem(value: str) -> str | None:
    """Why ``value`` cannot be a webhook endpoint's URL, or None."""
    if len(value) > _WEBHOOK_URL_MAX:
        return f"must be at most {_WEBHOOK_URL_MAX:,} characters, not {len(value):,}"
    shape = "must be an http:// or https:// URL with a host"
    if any(c.isspace() or not c.isprintable() for c in value):
        return shape
    unparsed = shape + " (if it has a port: 1 to 65535; if brackets: closed; if IDNA: valid)"
    try:  # both parsers: the one that shows the URL (webhooks.shown_url) and the one that posts to it
        parts, sent = urllib.parse.urlsplit(value), httpx.URL(value)
        ports, hosts = (parts.port, sent.port), (parts.hostname, sent.host)  # .host decodes IDNA
    except (ValueError, httpx.InvalidURL):  # a port that is not a number, a bracket left open, xn--a...
        return unparsed
    if any(port is not None and not 1 <= port <= 65535 for port in ports):
        return unparsed
    if parts.scheme not in ("http", "https") or not all(hosts):
        return shape
    return None


def _webhook_url(value: str) -> str | None:
    problem = value and _url_problem(value)
    return f"{problem} (or empty: webhooks off)" if problem else None


def _webhook_secret(value: str) -> str | None:
    ok = not value or _SECRET.fullmatch(value)
    return None if ok else "must be 16-256 printable ASCII characters (no blank)"


def _ops(name: str, raw: str) -> tuple[str, ...]:
    """A comma-separated list of audit ops; blanks ignored; empty: every op."""
    return tuple(op.strip() for op in raw.split(",") if op.strip())


def _known_ops(ops: tuple[str, ...]) -> str | None:
    # A misspelt op would match no entry: its events would never be sent, and nothing would say so.
    unknown = list(dict.fromkeys(op for op in ops if op not in OPS))
    if not unknown:
        return None
    named = ", ".join(repr(op) for op in unknown)
    return f"unknown op{'s' if len(unknown) > 1 else ''} {named}: each must be one of {', '.join(OPS)}"


DEFAULT_HOOK = "default"  # the endpoint of WEBHOOK_URL
MAX_HOOKS = 8  # endpoints in WEBHOOK_ENDPOINTS (each has a task per audit stream in every serve)
_HOOKS_MAX_BYTES = 64 * 1024
_HOOK_NAME = re.compile(r"[a-z0-9_-]{1,32}")
_HOOK_FIELDS = {"name", "url", "secret", "ops"}


@dataclass(frozen=True)
class Hook:
    """A webhook endpoint: where its events go, the secret that signs them, which ops (empty: all)."""

    name: str
    url: str
    secret: str = dataclasses.field(repr=False)
    ops: tuple[str, ...] = ()


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys: a second "url" would silently win.
    found = dict(pairs)
    if len(found) < len(pairs):
        counted = collections.Counter(key for key, _ in pairs)
        twice = [key for key, n in counted.items() if n > 1]
        raise _DuplicateKey(", ".join(map(repr, twice[:3])) + (" and more" if len(twice) > 3 else ""))
    return found


def _hooks(name: str, raw: str) -> tuple[Hook, ...]:
    """A JSON array of endpoints, each {"name", "url", "secret", "ops" (optional)}; empty: none."""
    if not raw.strip():
        return ()
    try:
        size = len(raw.encode())
    except UnicodeEncodeError:  # bytes the environment held that are not UTF-8
        raise SettingsError(f"{name} must be UTF-8 text") from None
    if size > _HOOKS_MAX_BYTES:
        raise SettingsError(f"{name} must be at most {_HOOKS_MAX_BYTES:,} bytes of JSON")
    try:
        found = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as twice:
        raise SettingsError(f"{name}: an endpoint gives {twice} twice") from None
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        raise SettingsError(f"{name} must be a JSON array of endpoints (it does not parse)") from None
    if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
        raise SettingsError(f"{name} must be a JSON array of objects")
    hooks = []
    for i, item in enumerate(found, 1):
        odd = sorted(set(item) - _HOOK_FIELDS)
        missing = [field for field in ("name", "url", "secret") if field not in item]
        if odd or missing:
            raise SettingsError(f"{name}: endpoint {i} must have name, url, secret and optionally ops"
                                f"{'; it lacks ' + ', '.join(missing) if missing else ''}"
                                f"{'; not ' + ', '.join(map(repr, odd[:3])) if odd else ''}"
                                f"{' and more' if len(odd) > 3 else ''}")  # fmt: skip
        wrong = [field for field in ("name", "url", "secret") if not isinstance(item[field], str)]
        ops = item.get("ops", [])
        if not (isinstance(ops, list) and all(isinstance(op, str) for op in ops)):
            wrong.append("ops")
        if wrong:
            raise SettingsError(f"{name}: endpoint {i}: name, url and secret are strings, ops a list "
                                f"of them; not {', '.join(wrong)}")  # fmt: skip
        hooks.append(Hook(item["name"], item["url"], item["secret"], tuple(ops)))
    return tuple(hooks)


def _valid_hooks(hooks: tuple[Hook, ...]) -> str | None:
    # The secrets are never shown; names and URLs (without their password) may be.
    if len(hooks) > MAX_HOOKS:
        return f"at most {MAX_HOOKS} endpoints, not {len(hooks)}"
    names = [hook.name for hook in hooks]
    for i, hook in enumerate(hooks, 1):
        if not _HOOK_NAME.fullmatch(hook.name) or hook.name == DEFAULT_HOOK:
            return (f"endpoint {i}: name must be 1-32 of a-z 0-9 _ - and not {DEFAULT_HOOK!r} "
                    "(WEBHOOK_URL's)")  # fmt: skip
        if names.count(hook.name) > 1:
            return f"endpoint {i}: name {hook.name!r} is given twice"
        problem = (
            "url must be set, an http:// or https:// URL" if not hook.url else
            f"url {_url_problem(hook.url)}" if _url_problem(hook.url) else
            "secret must be set, 16-256 printable ASCII characters (no blank)"
            if not hook.secret or _webhook_secret(hook.secret) else
            f"ops: {_known_ops(hook.ops)}" if _known_ops(hook.ops) else None
        )  # fmt: skip
        if problem:
            return f"endpoint {i} ({hook.name}): {problem}"
    return None


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
    pool_shards: int = env("POOL_SHARDS", 1, _int, Range(1, MAX_POOL_SHARDS))
    # After each change, wait until this many replicas have it (WAIT); 0: do not wait.
    redis_wait_replicas: int = env("REDIS_WAIT_REPLICAS", 0, _int, Range(0, 100))
    # How long that wait may take; a change not replicated by then answers 503.
    redis_wait_timeout_ms: int = env("REDIS_WAIT_TIMEOUT_MS", 1000, _int, Range(1, 60_000))
    redis_max_connections: int = env("REDIS_MAX_CONNECTIONS", 64, _int, Range(1, 10_000))
    redis_timeout_s: float = env("REDIS_TIMEOUT_S", 2.0, _float, Range(0, 60, above=True))
    # At most 5,000: a chunk's function call holds Redis some 30 ms, and Lua unpacks at most
    # about 8,000 values at once (a chunk of 8,000 fails).
    upload_chunk_size: int = env("UPLOAD_CHUNK_SIZE", 100, _int, Range(1, 5000))
    # Uploads stop when Redis uses this share of its maxmemory, so allocations and
    # redemptions (which need a little memory each) go on after uploads have filled it;
    # 1: no share of their own (uploads then run until Redis refuses writes).
    upload_memory_share: float = env("UPLOAD_MEMORY_SHARE", 0.9, _float, Range(0, 1, above=True))
    # To receive a request's body, once its headers are in.
    body_timeout_s: float = env("BODY_TIMEOUT_S", 10.0, _float, Range(0, 600, above=True))
    # For requests in flight to finish after SIGTERM.
    shutdown_timeout_s: float = env("SHUTDOWN_TIMEOUT_S", 15.0, _float, Range(0, 600, above=True))
    # An upload's; 50,000 coupons take 7-15 MB of JSON.
    max_body_bytes: int = env("MAX_BODY_BYTES", 32 * 1024 * 1024, _int, Range(1, 1024**3))
    # Uploads read or written at once per process (each holds its body, up to MAX_BODY_BYTES).
    max_uploads: int = env("MAX_UPLOADS", 2, _int, Range(1, 64))
    audit_max_len: int = env("AUDIT_MAX_LEN", 100_000, _int, Range(1, 10_000_000))
    # Events (feeds.py): while consumer groups read the trail, each audit stream keeps what they
    # have not acknowledged, up to this many entries (about 110 bytes each, docs/architecture.md);
    # beyond it the oldest are dropped, counted and logged. At least AUDIT_MAX_LEN.
    feed_max_len: int = env("FEED_MAX_LEN", 1_000_000, _int, Range(1, 100_000_000))
    # How often each app process trims the streams to what the groups need (0: never).
    feed_trim_interval_s: float = env("FEED_TRIM_INTERVAL_S", 1.0, _float, Range(0, 3600))
    # Pool-low events (pool/levels.py): per type, "<n>" available coupons or "<n>m" minutes of
    # supply at the current allocation rate ("" off); how often one check runs.
    pool_low_free: str = env("POOL_LOW_FREE", "", _text, _threshold)
    pool_low_standard: str = env("POOL_LOW_STANDARD", "", _text, _threshold)
    pool_low_megadeal: str = env("POOL_LOW_MEGADEAL", "", _text, _threshold)
    pool_low_interval_s: float = env("POOL_LOW_INTERVAL_S", 1.0, _float, Range(0.1, 3600))
    # Coupons of one type a user may hold at once (releases give one back); 0: no limit.
    max_allocations_per_user: int = env("MAX_ALLOCATIONS_PER_USER", 0, _int, Range(0, 1_000_000))
    # How long the answer to a request with an Idempotency-Key is kept for its retries.
    idempotency_ttl_s: int = env("IDEMPOTENCY_TTL_S", 86_400, _int, Range(1, 30 * 86_400))
    # A caller's budget of lookups that fail (a code that does not exist, or is not the
    # user's): refill per second and size; past it, 429 too_many_failed_lookups.
    failed_lookups_per_s: float = env("FAILED_LOOKUPS_PER_S", 10.0, _float, Range(0.01, 100_000))
    failed_lookup_burst: int = env("FAILED_LOOKUP_BURST", 100, _int, Range(1, 1_000_000))
    purge_interval_s: float = env("PURGE_INTERVAL_S", 60.0, _float, Range(0.1, 86_400))
    purge_batch_size: int = env("PURGE_BATCH_SIZE", 1000, _int, Range(1, 10_000))
    # How often each app process settles due holds and starts (0: never; allocations, stats
    # and the purge settle what they meet whatever this is).
    settle_interval_s: float = env("SETTLE_INTERVAL_S", 1.0, _float, Range(0, 3600))
    # How often each app process looks for batch jobs no process runs (a generation, the
    # tidying after a disable): new ones, or a dead process's, once their lease ran out.
    jobs_interval_s: float = env("JOBS_INTERVAL_S", 0.5, _float, Range(0, 3600))
    megadeal_max_concurrent: int = env("MEGADEAL_MAX_CONCURRENT", 5, _int, Range(1, 1000))
    megadeal_rate_per_s: int = env("MEGADEAL_RATE_PER_S", 10, _int, Range(1, 10_000))
    megadeal_max_wait_s: float = env("MEGADEAL_MAX_WAIT_S", 10.0, _float, Range(0, 300, above=True))
    megadeal_lease_s: float = env("MEGADEAL_LEASE_S", 5.0, _float, Range(0, 300, above=True))
    megadeal_max_waiters: int = env("MEGADEAL_MAX_WAITERS", 500, _int, Range(1, 10_000))
    # Connections (server.py): idle limit, headers' deadline and size, how many at once.
    keep_alive_s: float = env("KEEP_ALIVE_S", 5.0, _float, Range(0, 3600, above=True))
    header_timeout_s: float = env("HEADER_TIMEOUT_S", 10.0, _float, Range(0, 600, above=True))
    max_header_bytes: int = env("MAX_HEADER_BYTES", 16 * 1024, _int, Range(1, 1024**2))
    max_connections: int = env("MAX_CONNECTIONS", 4096, _int, Range(1, 1024**2))
    host: str = env("HOST", "127.0.0.1", _text, _host)
    port: int = env("PORT", 8080, _int, Range(1, 65_535))
    workers: int = env("WORKERS", 1, _int, Range(1, 64))
    log_level: str = env("LOG_LEVEL", "info", _lower, _log_level)
    # Webhooks: where to POST the audit trail's events (empty: nowhere), signed with the secret.
    webhook_url: str = env("WEBHOOK_URL", "", _text, _webhook_url)
    webhook_ops: tuple[str, ...] = env("WEBHOOK_OPS", (), _ops, _known_ops)  # audit.OPS; empty: every op
    webhook_batch: int = env("WEBHOOK_BATCH", 500, _int, Range(1, 1000))  # events per POST
    webhook_timeout_s: float = env("WEBHOOK_TIMEOUT_S", 10.0, _float, Range(0, 300, above=True))
    # A batch refused is retried with exponential backoff (full jitter) from the first wait to
    # the longest, until its oldest event is this old; then it is parked.
    webhook_retry_horizon_s: float = env("WEBHOOK_RETRY_HORIZON_S", 259_200.0, _float, Range(1, 30 * 86_400))
    webhook_backoff_s: float = env("WEBHOOK_BACKOFF_S", 1.0, _float, Range(0.01, 3600))
    webhook_max_backoff_s: float = env("WEBHOOK_MAX_BACKOFF_S", 300.0, _float, Range(0.01, 86_400))
    # A stream's deliverer holds its lease this long; a dead one's stream is taken over after it.
    webhook_lease_s: float = env("WEBHOOK_LEASE_S", 5.0, _float, Range(0.5, 300))
    # Parked batches kept per stream; past it the oldest go (logged at error level).
    webhook_parked_max: int = env("WEBHOOK_PARKED_MAX", 10_000, _int, Range(1, 1_000_000))
    # Secrets: never in a repr, a log line or an error message.
    admin_keys: tuple[str, ...] = env("COUPON_POOL_ADMIN_KEYS", (), _keys, _valid_keys, secret=True)
    client_keys: tuple[str, ...] = env("COUPON_POOL_CLIENT_KEYS", (), _keys, _valid_keys, secret=True)
    webhook_secret: str = env("WEBHOOK_SECRET", "", _text, _webhook_secret, secret=True)
    # More endpoints, each named, with a URL, a secret and ops of its own (JSON: they hold secrets).
    webhook_endpoints: tuple[Hook, ...] = env("WEBHOOK_ENDPOINTS", (), _hooks, _valid_hooks, secret=True)

    @property
    def hooks(self) -> tuple[Hook, ...]:
        """Every webhook endpoint: WEBHOOK_URL's ("default") first, then WEBHOOK_ENDPOINTS'."""
        first = (Hook(DEFAULT_HOOK, self.webhook_url, self.webhook_secret, self.webhook_ops),)
        return (first if self.webhook_url else ()) + self.webhook_endpoints

    def __post_init__(self) -> None:
        """Refuse values that would only fail later, and more obscurely: every one at once."""
        problems = []
        for f in dataclasses.fields(self):
            check = f.metadata["check"]
            value = getattr(self, f.name)
            problem = check(value) if check else None
            if problem:  # a secret is never echoed, nor a URL's password
                shown = (
                    "" if f.metadata["secret"] else f", not {redacted(value) if f.name in _URLS else value!r}"
                )
                problems.append(f"{f.metadata['env']}: {problem}{shown}")
        if self.feed_max_len < self.audit_max_len:
            problems.append(
                f"FEED_MAX_LEN: must be at least AUDIT_MAX_LEN ({self.audit_max_len}), "
                f"not {self.feed_max_len}"
            )
        if self.webhook_url and not self.webhook_secret:
            problems.append("WEBHOOK_SECRET: must be set when WEBHOOK_URL is (16-256 printable ASCII)")
        if self.webhook_max_backoff_s < self.webhook_backoff_s:
            problems.append(
                f"WEBHOOK_MAX_BACKOFF_S: must be at least WEBHOOK_BACKOFF_S ({self.webhook_backoff_s}), "
                f"not {self.webhook_max_backoff_s}"
            )
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
            if f.metadata["secret"] and isinstance(value, str):
                shown = "(set)" if value else "(not set)"
            elif f.name == "webhook_endpoints":  # names and URLs shown; secrets never
                shown = ", ".join(f"{hook.name} {redacted(hook.url)}" for hook in value) or "(none)"
            elif f.metadata["secret"]:
                shown = f"({len(value)} key{'s' if len(value) != 1 else ''})"
            elif f.name in _URLS:
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
    def pool_low(self) -> dict[str, str]:
        """The pool-low thresholds set, type -> "<n>" or "<n>m" (pool/levels.py parses them)."""
        given = {"FREE": self.pool_low_free, "STANDARD": self.pool_low_standard}
        given["MEGADEAL"] = self.pool_low_megadeal
        return {t: v for t, v in given.items() if v}

    @property
    def megadeal(self) -> MegadealLimits:
        return MegadealLimits(
            max_concurrent=self.megadeal_max_concurrent,
            rate_per_s=self.megadeal_rate_per_s,
            max_wait_s=self.megadeal_max_wait_s,
            lease_s=self.megadeal_lease_s,
            max_waiters=self.megadeal_max_waiters,
        )
