"""Golden answers: a fixed script of raw HTTP requests against a real ``coupon-pool serve``,
each answer compared byte for byte with the one recorded in golden_answers.json.

For each request it records the status line, every header in order (name and value), the
body bytes, and the request's JSON log line (keys, their order, and values); after the
script, the /metrics text (metric names, label names and the series present). A rewrite of
the request path must leave all of them as they are.

The script runs strictly in order, one request at a time, each on a new connection, on a
server of its own (an admin and a client key) over a flushed Redis, so every count and
every choice of coupon is the same on each run. Its coupons are uploaded by the script,
with fixed codes and far-future expiries; two are then made expired by setting their
expiry in Redis (``Setup``), as no request can.

Volatile parts are normalised by the narrow rules of ``Normaliser`` (each checked first):

- the ``date`` header (IMF-fixdate) -> ``<date>``;
- an X-Request-ID the process generated (``<16 hex>-<n>``, one prefix in the process) ->
  ``<generated-id-N>``, N counting distinct ids in the order the answers show them: the
  same placeholder in the answer's header and in its log line; a caller's id stays as is;
- timestamps the store takes from Redis's clock, in bodies (``allocated_at``,
  ``redeemed_at``, ``released_at``, ``rolled_back_at``, ``created_at``: RFC 3339, within
  this test's run) -> ``<rfc3339>``; such an answer's ``content-length`` (a timestamp's
  fraction may be left out) -> ``<length of the body>`` once it equals the body's length;
- an ``Allow`` header of more than one method -> ``<in any order: GET, HEAD>``: Starlette
  joins a set, whose order follows the process's string hash seed;
- in log lines: ``time`` -> ``<time>``, ``latency_ms`` -> ``<latency_ms>``, a
  ``client`` address's port -> ``<port>``;
- /metrics: the latency histogram's ``_bucket`` and ``_sum`` values and Redis's used
  memory -> ``<value>`` (every ``_count`` and counter is compared), and so its
  ``content-length``;
- /openapi.json: its body by sha256 and length;
- /v1/audit: each entry's ``id`` (``<ms>-<seq>``, its ms within this run) -> ``<entry-id>``,
  its ``time`` (RFC 3339, within this run) -> ``<rfc3339>``, and ``next`` (an entry id or a
  ``c1.`` cursor) -> ``<cursor>``, and so its ``content-length``.

Re-record (only when an answer is meant to change, from a build known to be right):
``GOLDEN_RECORD=1 pytest tests/http/test_golden.py``. That run writes the file and fails,
saying so, so a recording run never passes; review ``git diff`` of the file and commit it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import Redis as SyncRedis

from coupon_pool.pool.keys import CouponField, Keys
from support import wait_until
from support.live_server import LiveServer
from support.rawhttp import read_head
from support.redis_server import RedisServer

GOLDEN = Path(__file__).with_name("golden_answers.json")
RECORD = os.environ.get("GOLDEN_RECORD") == "1"
ADMIN = "golden-admin-key-0123456789"
CLIENT = "golden-client-key-0123456789"
HOST = "golden.test"
NAMESPACE = "cp"
PAST_MS = "946684800000"  # 2000-01-01T00:00:00Z: what an expired coupon's expiry is set to

# The settings that shape answers, pinned whatever the environment says.
SERVER_ENV = {
    "COUPON_POOL_ADMIN_KEYS": ADMIN,
    "COUPON_POOL_CLIENT_KEYS": CLIENT,
    "KEY_NAMESPACE": NAMESPACE,
    "POOL_SHARDS": "1",
    "MAX_ALLOCATIONS_PER_USER": "2",
    "FAILED_LOOKUPS_PER_S": "10",
    "FAILED_LOOKUP_BURST": "100",
    "IDEMPOTENCY_TTL_S": "86400",
    "MEGADEAL_MAX_CONCURRENT": "5",
    "MEGADEAL_RATE_PER_S": "10",
    "MEGADEAL_MAX_WAIT_S": "10",
    "MAX_BODY_BYTES": str(32 * 1024 * 1024),
}


# The script.


@dataclass(frozen=True)
class Request:
    name: str
    raw: bytes

    @property
    def head_only(self) -> bool:
        return self.raw.startswith(b"HEAD ")


@dataclass(frozen=True)
class Setup:
    """A change made straight in Redis between two requests (what no request can do)."""

    name: str
    run: Callable[[SyncRedis], None]


def http(
    method: str,
    path: str,
    body: str | bytes | None = None,
    *,
    key: str | None = CLIENT,
    headers: tuple[str, ...] = (),
    content_type: str | None = "application/json",
) -> bytes:
    """A request as a client sends it: Host, Authorization, ``headers``, then the body's."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    lines += headers
    data = body.encode() if isinstance(body, str) else body or b""
    if body is not None:
        if content_type is not None:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def raw(*lines: str, body: bytes = b"") -> bytes:
    """A request exactly as written (for what ``http`` would not send)."""
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def expired(*codes: str) -> Callable[[SyncRedis], None]:
    def run(redis: SyncRedis) -> None:
        keys = Keys(NAMESPACE)
        for code in codes:
            assert redis.exists(keys.coupon(code)), code
            redis.hset(keys.coupon(code), CouponField.EXPIRES, PAST_MS)

    return run


UPLOAD = (
    '{"batch":"gold","coupons":['
    '{"code":"GOLD-S1","type":"STANDARD","discount":{"kind":"flat","value":"10.00"},'
    '"expires_at":"2099-01-01T00:00:01Z"},'
    '{"code":"GOLD-S2","discount":{"kind":"flat","value":5},"expires_at":"2099-01-01T00:00:02Z"},'
    '{"code":"GOLD-S3","discount":{"kind":"percent","value":"12.5"},"expires_at":"2099-01-01T00:00:03Z"},'
    '{"code":"GOLD-S4","discount":{"kind":"flat","value":"0.99"},"expires_at":"2099-01-01T00:00:04Z"},'
    '{"code":"GOLD-F1","type":"FREE","discount":{"kind":"percent","value":100},'
    '"expires_at":"2099-01-01T01:00:05+01:00"},'
    '{"code":"GOLD-P1","discount":{"kind":"percent","value":15},"expires_at":"2099-06-01T00:00:00Z",'
    '"max_usages":8}]}'
)
HOT = ("/v1/allocations", "/v1/redemptions", "/v1/releases", "/v1/rollbacks")
LONG_KEY = "k" * 256
BIG = b'{"user_id":"' + b"x" * 70_000 + b'"}'


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"


def script() -> list[Request | Setup]:
    steps: list[Request | Setup] = []

    def req(name: str, raw_request: bytes) -> None:
        steps.append(Request(name, raw_request))

    def post(name: str, path: str, body: str | bytes, **kwargs: Any) -> None:
        req(name, http("POST", path, body, **kwargs))

    # Stock, and the admin route's own answers.
    post("upload", "/v1/coupons", UPLOAD, key=ADMIN)
    post("upload again: duplicates", "/v1/coupons", UPLOAD, key=ADMIN)
    post("upload with a client key: 403", "/v1/coupons", UPLOAD)

    # Allocations: success, keyed, replayed, key reused.
    post("allocate u-1", "/v1/allocations", '{"user_id":"u-1"}')
    keyed = ("Idempotency-Key: golden-alloc-1",)
    post("allocate u-2 keyed", "/v1/allocations", '{"user_id":"u-2"}', headers=keyed)
    post("allocate u-2 keyed: replay", "/v1/allocations", '{"user_id":"u-2"}', headers=keyed)
    post(
        "allocate u-2 keyed: replay, other spacing and the default type",
        "/v1/allocations",
        '{ "type": "STANDARD", "user_id": "u-2" }',
        headers=keyed,
    )
    post("allocate keyed: key reused for u-3", "/v1/allocations", '{"user_id":"u-3"}', headers=keyed)

    # Redemptions.
    post("redeem S1 u-1", "/v1/redemptions", '{"code":"GOLD-S1","user_id":"u-1"}')
    keyed = ("Idempotency-Key: golden-redeem-1",)
    body = '{"code":"GOLD-S2","user_id":"u-2","type":"STANDARD"}'
    post("redeem S2 u-2 keyed", "/v1/redemptions", body, headers=keyed)
    post("redeem S2 u-2 keyed: replay", "/v1/redemptions", body, headers=keyed)
    other = '{"code":"GOLD-S2","user_id":"u-9"}'
    post("redeem keyed: key reused", "/v1/redemptions", other, headers=keyed)
    post("redeem: already_redeemed", "/v1/redemptions", '{"code":"GOLD-S1","user_id":"u-1"}')
    body = '{"code":"GOLD-S1","user_id":"u-1","type":"FREE"}'
    post("redeem: type_mismatch", "/v1/redemptions", body)
    post("redeem: coupon_not_found", "/v1/redemptions", '{"code":"GOLD-NOPE","user_id":"u-1"}')
    post("redeem: not_allocated", "/v1/redemptions", '{"code":"GOLD-S4","user_id":"u-1"}')
    keyed = ("Idempotency-Key: golden-redeem-2",)
    body = '{"code":"GOLD-NOPE","user_id":"u-1"}'
    post("redeem keyed: coupon_not_found", "/v1/redemptions", body, headers=keyed)
    post("redeem keyed: coupon_not_found, replay", "/v1/redemptions", body, headers=keyed)

    # Releases.
    post("allocate u-3", "/v1/allocations", '{"user_id":"u-3"}')
    post("release S3 u-3", "/v1/releases", '{"code":"GOLD-S3","user_id":"u-3"}')
    post("allocate u-4: S3 again", "/v1/allocations", '{"user_id":"u-4","type":"STANDARD"}')
    keyed = ("Idempotency-Key: golden-release-1",)
    body = '{"code":"GOLD-S3","user_id":"u-4"}'
    post("release S3 u-4 keyed", "/v1/releases", body, headers=keyed)
    post("release S3 u-4 keyed: replay", "/v1/releases", body, headers=keyed)
    post("release keyed: key reused", "/v1/releases", '{"code":"GOLD-S3","user_id":"u-3"}', headers=keyed)
    post("release: already_redeemed", "/v1/releases", '{"code":"GOLD-S1","user_id":"u-1"}')
    post("release: not_allocated", "/v1/releases", '{"code":"GOLD-S4","user_id":"u-1"}')
    post("release: coupon_not_found", "/v1/releases", '{"code":"GOLD-NOPE","user_id":"u-1"}')
    body = '{"code":"GOLD-S1","user_id":"u-1","type":"FREE"}'
    post("release: type_mismatch", "/v1/releases", body)

    # Rollbacks.
    post("rollback S1 u-1", "/v1/rollbacks", '{"code":"GOLD-S1","user_id":"u-1"}')
    keyed = ("Idempotency-Key: golden-rollback-1",)
    body = '{"code":"GOLD-S2","user_id":"u-2"}'
    post("rollback S2 u-2 keyed", "/v1/rollbacks", body, headers=keyed)
    post("rollback S2 u-2 keyed: replay", "/v1/rollbacks", body, headers=keyed)
    post("rollback keyed: key reused", "/v1/rollbacks", '{"code":"GOLD-S1","user_id":"u-1"}', headers=keyed)
    post("rollback: not_redeemed", "/v1/rollbacks", '{"code":"GOLD-S1","user_id":"u-1"}')
    post("rollback: not_allocated", "/v1/rollbacks", '{"code":"GOLD-S4","user_id":"u-1"}')
    post("rollback: coupon_not_found", "/v1/rollbacks", '{"code":"GOLD-NOPE","user_id":"u-1"}')
    body = '{"code":"GOLD-S1","user_id":"u-1","type":"FREE"}'
    post("rollback: type_mismatch", "/v1/rollbacks", body)

    # The allocation's refusals.
    post("allocate FREE u-5", "/v1/allocations", '{"user_id":"u-5","type":"FREE"}')
    post("allocate FREE u-6: pool_empty", "/v1/allocations", '{"user_id":"u-6","type":"FREE"}')
    post("allocate u-1: a second coupon", "/v1/allocations", '{"user_id":"u-1"}')
    post("allocate u-1: user_limit_reached", "/v1/allocations", '{"user_id":"u-1"}')

    # Expired coupons (their expiry set in the past in Redis).
    post("redeem S2 u-2 again after its rollback", "/v1/redemptions", '{"code":"GOLD-S2","user_id":"u-2"}')
    steps.append(Setup("S2 and S3 expire", expired("GOLD-S2", "GOLD-S3")))
    post("rollback: coupon_expired", "/v1/rollbacks", '{"code":"GOLD-S2","user_id":"u-2"}')
    post("redeem: coupon_expired", "/v1/redemptions", '{"code":"GOLD-S3","user_id":"u-1"}')
    post("release of an expired coupon", "/v1/releases", '{"code":"GOLD-S3","user_id":"u-1"}')

    # Refused before the handler, on /v1/allocations.
    a = "/v1/allocations"
    body = '{"user_id":"u-7"}'
    post("no Authorization", a, body, key=None)
    post("unknown key", a, body, key="not-a-key-of-this-service")
    post("Basic scheme", a, body, key=None, headers=(f"Authorization: Basic {CLIENT}",))
    post("Bearer without a key", a, body, key=None, headers=("Authorization: Bearer",))
    post("bearer in lower case, two spaces", a, '{"user_id":"u-13"}', key=None,
         headers=(f"Authorization: bearer  {CLIENT}",))  # fmt: skip
    twice = (f"Authorization: Bearer {CLIENT}",)
    post("two Authorization headers", a, body, headers=twice)
    post("text/plain", a, body, content_type="text/plain")
    post("no Content-Type", a, body, content_type=None)
    post("Content-Type application/x-www-form-urlencoded", a, "user_id=u-7",
         content_type="application/x-www-form-urlencoded")  # fmt: skip
    req("Content-Length not a number", raw(
        f"POST {a} HTTP/1.1", f"Host: {HOST}", f"Authorization: Bearer {CLIENT}",
        "Content-Type: application/json", "Content-Length: 1x7", body=body.encode(),
    ))  # fmt: skip
    req("Content-Length negative", raw(
        f"POST {a} HTTP/1.1", f"Host: {HOST}", f"Authorization: Bearer {CLIENT}",
        "Content-Type: application/json", "Content-Length: -17", body=body.encode(),
    ))  # fmt: skip
    req("Content-Length twice", raw(
        f"POST {a} HTTP/1.1", f"Host: {HOST}", f"Authorization: Bearer {CLIENT}",
        "Content-Type: application/json", "Content-Length: 17", "Content-Length: 18", body=body.encode(),
    ))  # fmt: skip
    req("Content-Length beside Transfer-Encoding", raw(
        f"POST {a} HTTP/1.1", f"Host: {HOST}", f"Authorization: Bearer {CLIENT}",
        "Content-Type: application/json", "Content-Length: 22", "Transfer-Encoding: chunked",
        body=chunked(body.encode()),
    ))  # fmt: skip
    req("Content-Length not a number, with an X-Request-ID", raw(
        f"POST {a} HTTP/1.1", f"Host: {HOST}", f"Authorization: Bearer {CLIENT}", "X-Request-ID: golden-cl",
        "Content-Type: application/json", "Content-Length: x", body=body.encode(),
    ))  # fmt: skip
    post("body over 64 KiB (Content-Length)", a, BIG)
    req("body over 64 KiB (chunked)", raw(
        f"POST {a} HTTP/1.1", f"Host: {HOST}", f"Authorization: Bearer {CLIENT}",
        "Content-Type: application/json", "Transfer-Encoding: chunked", body=chunked(BIG),
    ))  # fmt: skip
    req("chunked body, valid", raw(
        f"POST {a} HTTP/1.1", f"Host: {HOST}", f"Authorization: Bearer {CLIENT}",
        "Content-Type: application/json", "Transfer-Encoding: chunked",
        body=chunked(b'{"user_id":"u-1"}'),
    ))  # fmt: skip
    post("invalid JSON", a, '{"user_id":')
    post("invalid JSON: not UTF-8", a, b'{"user_id":"\xff\xfe"}')
    post("empty body", a, "")
    post("JSON not an object", a, '["u-7"]')
    post("field repeated", a, '{"user_id":"a","user_id":"b"}')
    post("field repeated, same value", a, '{"user_id":"u-7","type":"FREE","type":"FREE"}')
    post("missing field", a, "{}")
    post("wrong type of value", a, '{"user_id":7}')
    post("null value", a, '{"user_id":null}')
    post("user_id empty", a, '{"user_id":""}')
    post("user_id too long", a, '{"user_id":"' + "u" * 300 + '"}')
    post("unknown type", a, '{"user_id":"u-7","type":"GOLD"}')
    post("lowercase type", a, '{"user_id":"u-7","type":"free"}')
    post("extra field", a, '{"user_id":"u-7","extra":1}')
    post("Idempotency-Key empty", a, body, headers=("Idempotency-Key: ",))
    post("Idempotency-Key 256 characters", a, body, headers=(f"Idempotency-Key: {LONG_KEY}",))
    req("Idempotency-Key not ASCII", http("POST", a, body).replace(
        b"Content-Type:", "Idempotency-Key: clé\r\nContent-Type:".encode(), 1,
    ))  # fmt: skip
    post("Idempotency-Key with a space", a, body, headers=("Idempotency-Key: golden key",))
    two = ("Idempotency-Key: golden-two-1", "Idempotency-Key: golden-two-2")
    post("two Idempotency-Key headers", a, body, headers=two)
    post("no key and invalid JSON: 401 first", a, '{"user_id":', key=None)
    post("unknown key and two Idempotency-Keys: 401 first", a, body, key="not-a-key-of-this-service",
         headers=two)  # fmt: skip
    post("text/plain and a bad Idempotency-Key: 415 first", a, body, content_type="text/plain",
         headers=("Idempotency-Key: ",))  # fmt: skip
    post("invalid JSON and a bad Idempotency-Key: 400 first", a, '{"user_id":',
         headers=("Idempotency-Key: ",))  # fmt: skip
    post("missing field and two Idempotency-Keys: the body first", a, "{}", headers=two)
    post("an admin key allocates too", a, '{"user_id":"u-8"}', key=ADMIN)
    post("application/problem+json is JSON", a, '{"user_id":"u-9"}', content_type="application/problem+json")
    post("Content-Type with a charset", a, '{"user_id":"u-10"}',
         content_type="Application/JSON; charset=utf-8")  # fmt: skip

    # Refused before the handler, on the other three.
    for path in HOT[1:]:
        route = path.rsplit("/", 1)[1]
        body = '{"code":"GOLD-S4","user_id":"u-7"}'
        post(f"{route}: no Authorization", path, body, key=None)
        post(f"{route}: unknown key", path, body, key="not-a-key-of-this-service")
        post(f"{route}: two Authorization headers", path, body, headers=twice)
        post(f"{route}: text/plain", path, body, content_type="text/plain")
        req(f"{route}: Content-Length not a number", raw(
            f"POST {path} HTTP/1.1", f"Host: {HOST}", f"Authorization: Bearer {CLIENT}",
            "Content-Type: application/json", "Content-Length: abc", body=body.encode(),
        ))  # fmt: skip
        post(f"{route}: body over 64 KiB", path, BIG)
        post(f"{route}: invalid JSON", path, '{"code":"GOLD-S4",')
        post(f"{route}: field repeated", path, '{"code":"GOLD-S4","user_id":"a","user_id":"b"}')
        post(f"{route}: missing fields", path, '{"code":"GOLD-S4"}')
        post(f"{route}: wrong type of value", path, '{"code":4,"user_id":"u-7"}')
        post(f"{route}: code with a space", path, '{"code":"GOLD S4","user_id":"u-7"}')
        post(f"{route}: unknown type", path, '{"code":"GOLD-S4","user_id":"u-7","type":"GOLD"}')
        post(f"{route}: extra field", path, '{"code":"GOLD-S4","user_id":"u-7","extra":true}')
        post(f"{route}: Idempotency-Key empty", path, body, headers=("Idempotency-Key: ",))
        post(f"{route}: two Idempotency-Key headers", path, body, headers=two)

    # X-Request-ID.
    post("caller's X-Request-ID echoed (success)", a, '{"user_id":"u-11"}',
         headers=("X-Request-ID: golden-request-1",))  # fmt: skip
    post("caller's X-Request-ID echoed (refusal)", "/v1/redemptions", '{"code":"GOLD-NOPE","user_id":"u-1"}',
         headers=("X-Request-ID: golden-request-2",))  # fmt: skip
    post("caller's X-Request-ID echoed (401)", a, "{}", key=None, headers=("X-Request-ID: golden-request-3",))
    post("X-Request-ID with a space: a fresh one", a, "{}", headers=("X-Request-ID: golden request",))
    post("X-Request-ID of 129 characters: a fresh one", a, "{}", headers=("X-Request-ID: " + "r" * 129,))
    post("X-Request-ID of 128 characters: echoed", a, "{}", headers=("X-Request-ID: " + "q" * 128,))
    post("X-Request-ID empty: a fresh one", a, "{}", headers=("X-Request-ID: ",))
    post("two X-Request-IDs: the first usable", a, "{}",
         headers=("X-Request-ID: golden bad", "X-Request-ID: golden-request-4"))  # fmt: skip

    # Methods and paths.
    for path in HOT:
        req(f"GET {path}: 405", http("GET", path))
    req("GET /v1/allocations without a key: 405", http("GET", a, key=None))
    req("HEAD /v1/allocations", http("HEAD", a))
    req("PUT /v1/redemptions", http("PUT", "/v1/redemptions", '{"code":"GOLD-S4","user_id":"u-7"}'))
    req("DELETE /v1/releases", http("DELETE", "/v1/releases"))
    req("OPTIONS /v1/rollbacks", http("OPTIONS", "/v1/rollbacks"))
    post("trailing slash /v1/allocations/", "/v1/allocations/", '{"user_id":"u-7"}')
    post("trailing slash /v1/redemptions/", "/v1/redemptions/", '{"code":"GOLD-S4","user_id":"u-7"}')
    post("upper case path", "/V1/allocations", '{"user_id":"u-7"}')
    post("unknown path under /v1", "/v1/allocation", '{"user_id":"u-7"}')
    post("double slash", "/v1//allocations", '{"user_id":"u-7"}')
    req("GET an unknown path", http("GET", "/nope"))
    req("GET an unknown path without a key", http("GET", "/v1/nope", key=None))
    post("query string on a hot path", f"{a}?user_id=u-99", '{"user_id":"u-12"}')
    req("HTTP/1.0 without a key", raw(f"POST {a} HTTP/1.0", f"Host: {HOST}", "Content-Length: 2", body=b"{}"))

    # Other routes.
    req("GET /v1/stats", http("GET", "/v1/stats"))
    req("GET /v1/stats without a key", http("GET", "/v1/stats", key=None))
    req("GET /v1/stats/", http("GET", "/v1/stats/"))
    req("HEAD /v1/stats", http("HEAD", "/v1/stats"))
    req("POST /v1/stats", http("POST", "/v1/stats", "{}"))
    req("GET /v1/coupons/GOLD-S1", http("GET", "/v1/coupons/GOLD-S1"))
    req("GET /v1/coupons/GOLD-P1", http("GET", "/v1/coupons/GOLD-P1"))
    req("GET /v1/coupons/GOLD-S2 (expired)", http("GET", "/v1/coupons/GOLD-S2"))
    req("GET /v1/coupons/GOLD-NOPE", http("GET", "/v1/coupons/GOLD-NOPE"))
    req("GET /v1/coupons/ bad code", http("GET", "/v1/coupons/GOLD%20S1"))
    req("GET /v1/megadeal", http("GET", "/v1/megadeal"))
    req("GET /v1/levels", http("GET", "/v1/levels"))
    req("GET /v1/webhooks (admin; none configured)", http("GET", "/v1/webhooks", key=ADMIN))
    req("GET /v1/webhooks with a client key", http("GET", "/v1/webhooks"))
    req("GET /v1/audit?limit=3 (admin)", http("GET", "/v1/audit?limit=3", key=ADMIN))
    req("GET /v1/audit?limit=0", http("GET", "/v1/audit?limit=0", key=ADMIN))
    req("GET /v1/audit?after=nonsense", http("GET", "/v1/audit?after=nonsense", key=ADMIN))
    req("GET /healthz", http("GET", "/healthz", key=None))
    req("HEAD /healthz", http("HEAD", "/healthz", key=None))
    req("POST /healthz", http("POST", "/healthz", "{}", key=None))
    req("GET /openapi.json", http("GET", "/openapi.json", key=None))
    req("GET /metrics", http("GET", "/metrics"))
    return steps


# Sending.


@dataclass
class Answer:
    status_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


def exchange(port: int, request: Request) -> Answer:
    """Send ``request`` on a new connection and read its whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request.raw)
        head, body = read_head(conn)
        status_line, *lines = head.split(b"\r\n")
        headers = []
        for line in lines:
            name, sep, value = line.partition(b":")
            assert sep, f"{request.name}: header line {line!r}"
            assert value.startswith(b" "), f"{request.name}: header line {line!r}"
            headers.append((name, value[1:]))
        lengths = [int(v) for n, v in headers if n.lower() == b"content-length"]
        assert len(lengths) <= 1, f"{request.name}: {lengths}"
        if request.head_only:
            assert body == b"", f"{request.name}: a body after HEAD"
        elif lengths:
            while len(body) < lengths[0]:
                more = conn.recv(65536)
                if not more:
                    raise AssertionError(f"{request.name}: the connection closed inside the body")
                body += more
            assert len(body) == lengths[0], f"{request.name}: more than Content-Length"
        else:
            raise AssertionError(f"{request.name}: an answer without Content-Length: {head!r}")
        if (b"connection", b"close") in headers:  # said so: the server closes
            conn.settimeout(5)
            assert conn.recv(1) == b"", f"{request.name}: 'connection: close' but it stayed open"
        return Answer(status_line, headers, body)


# Normalising.

GENERATED_ID = re.compile(r"([0-9a-f]{16})-[1-9][0-9]*")
HTTP_DATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d\d:\d\d:\d\d GMT"
)
METHOD = re.compile(r"[A-Z]+")
LOG_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
STORE_TIME = re.compile(rb'"(allocated_at|redeemed_at|released_at|rolled_back_at|created_at)":"([^"]*)"')
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)")
ENTRY_ID = re.compile(rb'"id":"([0-9]{13})-[0-9]+(-[0-9]+)?"')
ENTRY_TIME = re.compile(rb'"time":"([^"]*)"')
NEXT_CURSOR = re.compile(rb'"next":"(c1\.[A-Za-z0-9_-]+|[0-9]+-[0-9]+(-[0-9]+)?)"')
CLIENT_ADDRESS = re.compile(r"127\.0\.0\.1:[1-9][0-9]{0,4}")
# Metric samples whose values depend on timing or on Redis's memory.
VOLATILE_SAMPLE = re.compile(
    r"(coupon_pool_http_request_duration_seconds_(bucket|sum)|coupon_pool_redis_used_memory_bytes)(\{.*\})? "
)


class Normaliser:
    """The rules of the module's docstring; each checks the value's form before it replaces it."""

    def __init__(self, started: datetime) -> None:
        self.window = (started - timedelta(minutes=1), datetime.now(UTC) + timedelta(minutes=5))
        self.generated: dict[str, str] = {}
        self.prefixes: set[str] = set()

    def request_id(self, value: str, name: str) -> str:
        placeholder = self.generated.get(value)
        if placeholder:
            return placeholder
        found = GENERATED_ID.fullmatch(value)
        if found is None:
            return value  # the caller's, echoed
        self.prefixes.add(found.group(1))
        assert len(self.prefixes) == 1, f"{name}: a second id prefix in one process: {self.prefixes}"
        placeholder = self.generated[value] = f"<generated-id-{len(self.generated) + 1}>"
        return placeholder

    def store_times(self, body: bytes, name: str) -> tuple[bytes, int]:
        def replace(match: re.Match[bytes]) -> bytes:
            value = match.group(2).decode()
            assert RFC3339.fullmatch(value), f"{name}: {match.group(1)!r} {value!r} is not RFC 3339"
            when = datetime.fromisoformat(value)
            assert self.window[0] <= when <= self.window[1], f"{name}: {value} is not of this run"
            return b'"' + match.group(1) + b'":"<rfc3339>"'

        return STORE_TIME.subn(replace, body)

    def audit_entries(self, body: bytes, name: str) -> tuple[bytes, int]:
        def entry_id(match: re.Match[bytes]) -> bytes:
            when = datetime.fromtimestamp(int(match.group(1)) / 1000, UTC)
            assert self.window[0] <= when <= self.window[1], (
                f"{name}: entry {match.group(0)!r} is not of this run"
            )
            return b'"id":"<entry-id>"'

        def entry_time(match: re.Match[bytes]) -> bytes:
            value = match.group(1).decode()
            assert RFC3339.fullmatch(value), f"{name}: time {value!r} is not RFC 3339"
            assert self.window[0] <= datetime.fromisoformat(value) <= self.window[1], f"{name}: {value}"
            return b'"time":"<rfc3339>"'

        body, ids = ENTRY_ID.subn(entry_id, body)
        body, times = ENTRY_TIME.subn(entry_time, body)
        body, cursors = NEXT_CURSOR.subn(b'"next":"<cursor>"', body)
        return body, ids + times + cursors

    def answer(self, request: Request, answer: Answer) -> dict[str, Any]:
        name = request.name
        path = request.raw.split(b" ", 2)[1]
        entry: dict[str, Any] = {"name": name, "request": shown_request(request.raw)}
        entry["status_line"] = answer.status_line.decode("latin-1")
        body = answer.body
        body_note: dict[str, Any] = {}
        if path == b"/openapi.json" and answer.status_line.endswith(b" 200 OK"):
            body_note = {"body_sha256": hashlib.sha256(body).hexdigest(), "body_length": len(body)}
            changed = 0
        elif path == b"/metrics" and answer.status_line.endswith(b" 200 OK"):
            body_note = {"body_lines": metrics_lines(body)}
            changed = 1
        elif path.startswith(b"/v1/audit") and answer.status_line.endswith(b" 200 OK"):
            body, changed = self.audit_entries(body, name)
        else:
            body, changed = self.store_times(body, name)
        headers = []
        for raw_name, raw_value in answer.headers:
            header, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            lower = header.lower()
            if lower == "date":
                assert HTTP_DATE.fullmatch(value), f"{name}: date {value!r}"
                value = "<date>"
            elif lower == "x-request-id":
                value = self.request_id(value, name)
            elif lower == "allow" and "," in value:
                methods = value.split(", ")
                assert all(METHOD.fullmatch(m) for m in methods), f"{name}: allow {value!r}"
                value = f"<in any order: {', '.join(sorted(methods))}>"
            elif lower == "content-length" and changed:
                assert int(value) == len(answer.body), f"{name}: content-length {value}"
                value = "<length of the body>"
            headers.append([header, value])
        entry["headers"] = headers
        if body_note:
            entry.update(body_note)
        else:
            try:
                entry["body"] = body.decode()
            except UnicodeDecodeError:
                entry["body_hex"] = body.hex()
        return entry

    def log_line(self, line: dict[str, Any], name: str) -> dict[str, Any]:
        shown: dict[str, Any] = {}
        for key, value in line.items():
            if key == "time":
                assert isinstance(value, str), f"{name}: time {value!r}"
                assert LOG_TIME.fullmatch(value), f"{name}: time {value!r}"
                value = "<time>"
            elif key == "latency_ms":
                assert isinstance(value, int | float), f"{name}: latency_ms {value!r}"
                assert value >= 0, f"{name}: latency_ms {value!r}"
                value = "<latency_ms>"
            elif key == "request_id":
                assert value in self.generated or not GENERATED_ID.fullmatch(value), f"{name}: {value}"
                value = self.generated.get(value, value)
            elif key == "client":
                assert CLIENT_ADDRESS.fullmatch(value), f"{name}: client {value!r}"
                value = "127.0.0.1:<port>"
            shown[key] = value
        return shown


def shown_request(data: bytes) -> str:
    """The request as the fixture shows it: whole, or a long body by its length and sha256."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if len(body) > 2048:
        digest = hashlib.sha256(body).hexdigest()
        body = f"<{len(body)} bytes, sha256 {digest}>".encode()
    return (head + sep + body).decode("utf-8", "backslashreplace")


def metrics_lines(body: bytes) -> list[str]:
    lines = []
    for line in body.decode().splitlines():
        if not line.startswith("#") and VOLATILE_SAMPLE.match(line):
            name, _, value = line.rpartition(" ")
            float(value)  # a number
            line = f"{name} <value>"
        lines.append(line)
    return lines


# The test.


@pytest.fixture
def golden_server(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[LiveServer, Path]]:
    """A server with an admin and a client key on a flushed Redis, its log in a file."""
    with SyncRedis.from_url(redis_server.url) as flushing:
        flushing.flushall()
    log = tmp_path / "server.log"
    server = LiveServer(redis_server.url, log=log, **SERVER_ENV)
    yield server, log
    server.stop()


def test_every_answer_log_line_and_metric_name_is_as_recorded(
    golden_server: tuple[LiveServer, Path], redis_server: RedisServer
) -> None:
    server, log = golden_server
    started = datetime.now(UTC)
    answers: list[tuple[Request, Answer]] = []
    with SyncRedis.from_url(redis_server.url) as redis:
        for step in script():
            if isinstance(step, Setup):
                step.run(redis)
            else:
                answers.append((step, exchange(server.port, step)))
    names = [request.name for request, _ in answers]
    assert len(set(names)) == len(names), "two requests of the script have one name"

    normaliser = Normaliser(started)
    entries = [normaliser.answer(request, answer) for request, answer in answers]
    check_replays(answers)

    # Each answer's log line, found by its X-Request-ID (all lines are written once the last
    # answer is out, at the latest at the end of that event-loop turn).
    ids = [dict(answer.headers)[b"x-request-id"].decode() for _, answer in answers]
    assert len(set(ids)) == len(ids), "two answers with one X-Request-ID"

    def lines() -> dict[str, dict[str, Any]]:
        parsed = [orjson.loads(line) for line in log.read_bytes().splitlines() if line.startswith(b"{")]
        return {line["request_id"]: line for line in parsed if "request_id" in line}

    wait_until(lambda: set(ids) <= set(lines()), timeout=10)
    by_id = lines()
    others = [line for rid, line in by_id.items() if rid not in ids]
    # The one request before the script: LiveServer's readiness check.
    assert [(o["method"], o["path"], o["status"]) for o in others] == [("GET", "/healthz", 200)], others
    for entry, rid in zip(entries, ids, strict=True):
        entry["log"] = normaliser.log_line(by_id[rid], entry["name"])

    recorded = {"answers": entries}
    if RECORD:
        GOLDEN.write_text(dumps(recorded))
        pytest.fail(f"GOLDEN_RECORD=1: recorded {len(entries)} answers in {GOLDEN}; run again without it")
    if not GOLDEN.exists():
        pytest.fail(f"no {GOLDEN.name}: record it with GOLDEN_RECORD=1 (from a build known to be right)")
    compare(json.loads(GOLDEN.read_text())["answers"], entries)


# A header: ["name", "value"] on one line of the file.
_PAIR = re.compile(r'\[\n\s+("(?:[^"\\]|\\.)*"),\n\s+("(?:[^"\\]|\\.)*")\n\s+\]')


def dumps(recorded: dict[str, Any]) -> str:
    """The fixture's text: indented JSON, a header to a line."""
    return _PAIR.sub(r"[\1, \2]", json.dumps(recorded, indent=1, ensure_ascii=False)) + "\n"


def check_replays(answers: list[tuple[Request, Answer]]) -> None:
    """A replayed answer's body is its first answer's, to the byte (timestamps included)."""
    by_name = {request.name: answer for request, answer in answers}
    for name, answer in by_name.items():
        first = name.partition(": replay")[0]
        if first != name:
            assert answer.body == by_name[first].body, name
            assert (b"idempotent-replayed", b"true") in answer.headers, name


def compare(recorded: list[dict[str, Any]], current: list[dict[str, Any]]) -> None:
    recorded_names = [e["name"] for e in recorded]
    current_names = [e["name"] for e in current]
    assert current_names == recorded_names, (
        "the script's requests are not those recorded: re-record with GOLDEN_RECORD=1 if it was changed"
    )
    differences = []
    for was, now in zip(recorded, current, strict=True):
        before, after = json.dumps(was, indent=1), json.dumps(now, indent=1)
        if before != after:
            diff = difflib.unified_diff(
                before.splitlines(), after.splitlines(), "recorded", "now", n=2, lineterm=""
            )
            differences.append(f"=== {now['name']}\n" + "\n".join(diff))
    assert not differences, f"{len(differences)} answer(s) differ from {GOLDEN.name}:\n" + "\n\n".join(
        differences
    )


def test_the_recorded_time_placeholders_are_narrow() -> None:
    """The rules replace only what they name: a body without Redis times is left alone."""
    normaliser = Normaliser(datetime.now(UTC))
    body = b'{"code":"A","expires_at":"2099-01-01T00:00:00Z","allocated_at":"%s"}' % (
        datetime.now(UTC).isoformat().replace("+00:00", "Z").encode()
    )
    replaced, count = normaliser.store_times(body, "t")
    assert count == 1
    assert replaced == b'{"code":"A","expires_at":"2099-01-01T00:00:00Z","allocated_at":"<rfc3339>"}'
    with pytest.raises(AssertionError):
        normaliser.store_times(b'{"allocated_at":"yesterday"}', "t")
    assert normaliser.request_id("caller-id", "t") == "caller-id"
    assert normaliser.request_id("0123456789abcdef-7", "t") == "<generated-id-1>"
    assert normaliser.request_id("0123456789abcdef-7", "t") == "<generated-id-1>"
