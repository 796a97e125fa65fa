"""What the bench sends: the requests of each scenario and the coupons it uploads first."""

from __future__ import annotations

import itertools
import random
from collections import deque
from datetime import UTC, datetime, timedelta

import orjson

from ...models import CouponType
from .http import Target

UPLOAD_SIZE = 50_000
MAX_USAGES = 1_000_000
# The mixed scenario's pool: 2,000 coupons of 100 usages per type, 200,000 allocations.
MIXED_POOL = {"coupons_per_type": 2_000, "max_usages": 100}
AFTER_RUN_S = 3600  # the bench's coupons expire this long after its run (then the purge takes them)


def coupons_body(
    prefix: str,
    count: int,
    types: tuple[CouponType, ...],
    max_usages: int = 1,
    expires_in_s: float = AFTER_RUN_S,
    first: int = 0,
) -> bytes:
    """An upload body of ``count`` coupons named ``<prefix>-<i>`` from ``first``, types in turn."""
    expires = (datetime.now(UTC) + timedelta(seconds=expires_in_s)).isoformat()
    return orjson.dumps(
        {
            "coupons": [
                {
                    "code": f"{prefix}-{i}",
                    "type": types[i % len(types)].value,
                    "discount": {"kind": "percent", "value": 10},
                    "expires_at": expires,
                    "max_usages": max_usages,
                }
                for i in range(first, first + count)
            ]
        }
    )


def parse_mix(text: str) -> dict[CouponType, int]:
    """``STANDARD=8,FREE=2`` as weights by type."""
    mix: dict[CouponType, int] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        try:
            mix[CouponType(name.strip().upper())] = int(weight or 1)
        except ValueError:
            raise ValueError(f"--mix takes TYPE=WEIGHT,... with types {', '.join(CouponType)}") from None
    if not mix or min(mix.values()) < 1:
        raise ValueError("--mix needs at least one type with a weight of 1 or more")
    return mix


class Allocate:
    """Allocations of a type mix, each for a new user, from a few multi-usage coupons.

    By default 10 coupons of 1,000,000 usages per type: the pool does not run dry however
    long the run, and each allocation still takes the full path (a free usage, a new
    holder, the counters).
    """

    def __init__(
        self,
        target: Target,
        run_id: str,
        mix: dict[CouponType, int],
        *,
        coupons_per_type: int = 10,
        max_usages: int = MAX_USAGES,
        keyed: bool = False,
        expires_in_s: float = AFTER_RUN_S,
        hold_s: int | None = None,
    ) -> None:
        """``keyed``: each allocation carries an Idempotency-Key of its own; ``hold_s``: each
        holds its coupon that long (POST /v1/allocations' hold_s) instead of for good."""
        self.expires_in_s = expires_in_s
        self.target = target
        self.run_id = run_id
        self.types = tuple(mix)
        self.coupons_per_type = coupons_per_type
        self.max_usages = max_usages
        self.keyed = keyed
        self._cycle = itertools.cycle([t for t, w in mix.items() for _ in range(w)])
        self._users = itertools.count()
        self._hold = b"" if hold_s is None else b',"hold_s":%d' % hold_s

    def setup_requests(self) -> list[bytes]:
        """The uploads of the pool, at most UPLOAD_SIZE coupons each."""
        count = self.coupons_per_type * len(self.types)
        prefix = f"B{self.run_id}"
        bodies = (
            coupons_body(
                prefix, min(UPLOAD_SIZE, count - first), self.types, self.max_usages, self.expires_in_s, first
            )
            for first in range(0, count, UPLOAD_SIZE)
        )
        return [self.target.request("POST", "/v1/coupons", body) for body in bodies]

    def allocation(self) -> bytes:
        user = b"b%s-%d" % (self.run_id.encode(), next(self._users))
        body = b'{"user_id":"%s","type":"%s"%s}' % (user, next(self._cycle).value.encode(), self._hold)
        headers = [b"Idempotency-Key: " + user] if self.keyed else []
        return self.target.request("POST", "/v1/allocations", body, headers)

    def next_request(self) -> tuple[str, bytes] | None:
        return "allocate", self.allocation()

    def on_response(self, op: str, status: int, body: bytes) -> None:
        pass


class Redeem:
    """Redemptions of allocations made beforehand (in the preparation, not measured)."""

    def __init__(self, allocations: deque[tuple[str, str]], target: Target) -> None:
        """``allocations`` is consumed: what one run redeemed, the next does not send again."""
        self.target = target
        self._pending = allocations

    def next_request(self) -> tuple[str, bytes] | None:
        if not self._pending:
            return None
        code, user = self._pending.popleft()
        body = b'{"code":"%s","user_id":"%s"}' % (code.encode(), user.encode())
        return "redeem", self.target.request("POST", "/v1/redemptions", body)

    def on_response(self, op: str, status: int, body: bytes) -> None:
        pass


class Validate:
    """Validations of allocations made beforehand, each sent again and again (a validation
    changes nothing, so the same ones answer alike however often)."""

    def __init__(self, allocations: list[tuple[str, str]], target: Target) -> None:
        self.target = target
        self._requests = itertools.cycle(
            [
                target.request(
                    "POST", "/v1/validations", b'{"code":"%s","user_id":"%s"}' % (c.encode(), u.encode())
                )
                for c, u in allocations
            ]
        )

    def next_request(self) -> tuple[str, bytes] | None:
        return "validate", next(self._requests)

    def on_response(self, op: str, status: int, body: bytes) -> None:
        pass


class Collect:
    """Allocations whose answers are kept, to be redeemed later."""

    def __init__(self, allocate: Allocate, count: int) -> None:
        self.allocate = allocate
        self.left = count
        self.allocations: list[tuple[str, str]] = []

    def next_request(self) -> tuple[str, bytes] | None:
        if self.left <= 0:
            return None
        self.left -= 1
        return "allocate", self.allocate.allocation()

    def on_response(self, op: str, status: int, body: bytes) -> None:
        if status == 201:
            answer = orjson.loads(body)
            self.allocations.append((answer["code"], answer["user_id"]))


class Mixed:
    """Per 20 requests: 10 allocations, 6 redemptions of earlier ones, 2 stats, 2 coupon reads.

    Give it an Allocate of coupons with realistic usages (``MIXED_POOL``): a coupon read
    lists the coupon's holders, up to 1,000.
    """

    PLAN = ("allocate",) * 10 + ("redeem",) * 6 + ("stats",) * 2 + ("coupon",) * 2

    def __init__(self, allocate: Allocate) -> None:
        self.allocate = allocate
        self.target = allocate.target
        self._allocated: deque[tuple[str, str]] = deque(maxlen=10_000)
        self._plan = itertools.cycle(random.Random(7).sample(self.PLAN, len(self.PLAN)))
        self._stats = self.target.request("GET", "/v1/stats")

    def next_request(self) -> tuple[str, bytes] | None:
        op = next(self._plan)
        if op == "stats":
            return op, self._stats
        if op in ("redeem", "coupon") and self._allocated:
            code, user = self._allocated.popleft()
            if op == "coupon":
                return op, self.target.request("GET", f"/v1/coupons/{code}")
            body = b'{"code":"%s","user_id":"%s"}' % (code.encode(), user.encode())
            return op, self.target.request("POST", "/v1/redemptions", body)
        return "allocate", self.allocate.allocation()

    def on_response(self, op: str, status: int, body: bytes) -> None:
        if op == "allocate" and status == 201:
            answer = orjson.loads(body)
            if "code" in answer:  # the reference server answers without a coupon
                self._allocated.append((answer["code"], answer["user_id"]))
