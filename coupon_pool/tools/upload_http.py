"""The calls ``coupon-pool upload`` makes: POST /v1/coupons, retried when that is safe."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from ..pool.keyed import REPLAYED_HEADER
from .common import ServiceUrl

TIMEOUT_S = 120.0  # one upload of 50,000 takes about a second; a loaded service, longer


class UploadFailed(Exception):
    """The service refused an upload or could not be reached: exit FAILED."""


class Answer(NamedTuple):
    status: int
    document: dict[str, Any]
    replayed: bool  # the service's first answer to this Idempotency-Key, not this request's


class Service:
    """POST /v1/coupons on one keep-alive connection, with retries that are safe to make."""

    def __init__(self, url: str, api_key: str | None, say: Callable[[str], None], retries: int) -> None:
        """``say``: where a retry is announced."""
        self.service = ServiceUrl.at(url)
        self.path = self.service.prefix + "/v1/coupons"
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.say, self.retries = say, retries
        self.connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.connection is None:
            self.connection = self.service.connection(TIMEOUT_S)
        return self.connection

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def upload(self, body: bytes, key: str) -> Answer:
        """The answer to one upload; connection failures, 503 and 409 in progress, and 429 are
        retried (the Idempotency-Key makes a retry safe)."""
        headers = {**self.headers, "Idempotency-Key": key}
        for attempt in range(self.retries + 1):
            wait = min(2.0**attempt, 30.0)
            try:
                connection = self._connect()
                connection.request("POST", self.path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                problem = f"{type(exc).__name__}: {exc}"
            else:
                document = document_of(answer)
                if response.status not in (409, 429, 503) or attempt == self.retries:
                    replayed = response.getheader(REPLAYED_HEADER, "").lower() == "true"
                    return Answer(response.status, document, replayed)
                problem = f"{response.status} {document.get('code', '')}"
                wait = _retry_after(response.getheader("Retry-After"), wait)
            if attempt == self.retries:
                raise UploadFailed(f"the service did not take an upload after {attempt + 1} tries: {problem}")
            self.say(f"{problem}; trying again in {wait:.0f}s")
            time.sleep(wait)
        raise AssertionError("unreachable")


def document_of(answer: bytes) -> dict[str, Any]:
    """An answer's JSON object (a problem, say); anything else as its ``detail``."""
    try:
        document = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return {"detail": answer[:200].decode(errors="replace")}
    return document if isinstance(document, dict) else {"detail": str(document)[:200]}


def _retry_after(header: str | None, default: float) -> float:
    try:
        return min(max(float(header or ""), 0.5), 60.0)
    except ValueError:
        return default
