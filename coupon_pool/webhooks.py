"""Webhooks: the signed POST the service sends, and what a receiver checks (Stripe's scheme).

Each POST carries ``Coupon-Pool-Signature: t=<unix seconds>,v1=<hex>``, where the hex is
HMAC-SHA256 with the endpoint's secret over ``"<t>." + body`` (the body's exact bytes). A
receiver recomputes it, compares in constant time, and refuses a ``t`` further than its
replay window from its own clock (README, Events: the same steps as a snippet to copy).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

HEADER = "Coupon-Pool-Signature"
TOLERANCE_S = 300  # the replay window a receiver applies by default


def signature(secret: str, t: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<t>." + body`` under ``secret``."""
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, now: float) -> str:
    """The header's value for ``body`` sent at ``now`` (unix seconds)."""
    t = int(now)
    return f"t={t},v1={signature(secret, t, body)}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance_s: float = TOLERANCE_S) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its ``t`` is within
    ``tolerance_s`` of ``now``; any ``v1`` may match (several while a secret is rotated)."""
    t: int | None = None
    signatures = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            t = int(value)
        elif name == "v1":
            signatures.append(value)
    if t is None or abs(now - t) > tolerance_s:
        return False
    expected = signature(secret, t, body)
    return any(hmac.compare_digest(expected, s) for s in signatures)


def shown_url(url: str) -> str:
    """The endpoint without what may be a credential (user info, query), for operators."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def body_of(events: Sequence[dict[str, Any]]) -> bytes:
    """A POST's body: ``{"events": [...]}``, each event as ``GET /v1/audit`` gives it."""
    return orjson.dumps({"events": list(events)})


@dataclass(frozen=True)
class Outcome:
    """One POST: taken (a 2xx), or why not (its status, or the error: refused, timed out...)."""

    ok: bool
    status: int | None
    error: str

    @property
    def reason(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else self.error


class Sender:
    """Signed POSTs to one endpoint, on a small connection pool of their own."""

    def __init__(self, url: str, secret: str, timeout_s: float, connections: int = 4) -> None:
        self.url = url
        self.secret = secret
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.http = httpx.AsyncClient(timeout=timeout_s, limits=limits, follow_redirects=False)

    async def post(self, body: bytes) -> Outcome:
        """POST ``body`` signed now; never raises for what the endpoint or the network did."""
        headers = {"Content-Type": "application/json", HEADER: sign(self.secret, body, time.time())}
        try:
            answer = await self.http.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException:
            return Outcome(False, None, "timeout")
        except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
            # InvalidURL is no HTTPError: a URL settings let through must not end a delivery task
            return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:200])
        return Outcome(200 <= answer.status_code < 300, answer.status_code, "")

    async def aclose(self) -> None:
        await self.http.aclose()
