"""schemathesis hooks (loaded through SCHEMATHESIS_HOOKS by tests/http/test_openapi.py).

Three rules of the service JSON Schema cannot state, so generated requests are steered
rather than the positive-data check turned off:
- a coupon's `expires_at` must lie in the future: expiries that are valid date-times (by
  the service's own rule, future aside) are moved into the future; and its `starts_at`
  before it (and after 1970): a valid date-time start of a coupon so moved goes 12 hours
  before its expiry;
- a number must be sent as written (`3`, not `3.0`), while JSON Schema counts 3.0 as an
  integer: whole floats become integers;
- a generation (POST /v1/batches) takes the coupon's rules above for its `expires_at` and
  `starts_at`, a charset holds each character once (repeats are dropped), and its pattern
  must allow 10 times `count` codes: a body refused for that alone gets the pattern
  `########` of the default charset; and `count` is kept to 100 at most, so the
  generations the run starts stay small jobs of the test's server;
- a generation's prefix, drawn part and postfix make 64 characters at most: in a body
  refused for that alone, the prefix and postfix are shortened to fit;
- an audit position names slots exactly when the pool is sharded (the document, the same
  for every deployment, allows every form): the test's server is one Redis, so a generated
  `<ms>-<seq>-<slot>` loses its slot, and a generated `c1.` cursor becomes the entry id
  `0-0`.
Every other generated value is kept, so an invalid request stays invalid.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import schemathesis
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from coupon_pool import cursor
from coupon_pool.models import AUDIT_ID_PATTERN, MAX_CODE_LENGTH, GenerationRequest

_DATETIME = TypeAdapter(AwareDatetime)


def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        _DATETIME.validate_json(f'"{value}"', strict=True)
    except ValidationError:
        return False
    return True


def _whole_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        for key, item in value.items():
            value[key] = _whole_numbers(item)
    elif isinstance(value, list):
        value[:] = [_whole_numbers(item) for item in value]
    return value


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if context.operation is None or not isinstance(body, dict):
        return body
    body = _whole_numbers(body)
    if context.operation.path == "/v1/batches":
        return _generation(body)
    if context.operation.path != "/v1/coupons":
        return body
    coupons = body.get("coupons")
    if isinstance(coupons, list):
        future = datetime.now(UTC) + timedelta(days=1)
        for i, coupon in enumerate(coupons):
            if isinstance(coupon, dict) and _is_datetime(coupon.get("expires_at")):
                expires_at = future + timedelta(seconds=i)
                coupon["expires_at"] = expires_at.isoformat()
                if _is_datetime(coupon.get("starts_at")):
                    coupon["starts_at"] = (expires_at - timedelta(hours=12)).isoformat()
    return body


@schemathesis.hook
def map_query(context: Any, query: Any) -> Any:
    if context.operation is None or context.operation.path != "/v1/audit" or not isinstance(query, dict):
        return query
    after = query.get("after")
    if isinstance(after, str) and re.fullmatch(AUDIT_ID_PATTERN, after) and after.count("-") == 2:
        query["after"] = after.rpartition("-")[0]
    elif isinstance(after, str) and re.fullmatch(cursor.PATTERN, after) and len(after) <= cursor.MAX_LENGTH:
        query["after"] = "0-0"
    return query


def _generation(body: dict[str, Any]) -> dict[str, Any]:
    if _is_datetime(body.get("expires_at")):
        expires_at = datetime.now(UTC) + timedelta(days=1)
        body["expires_at"] = expires_at.isoformat()
        if _is_datetime(body.get("starts_at")):
            body["starts_at"] = (expires_at - timedelta(hours=12)).isoformat()
    count = body.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1_000_000:
        return body  # invalid as generated: it stays invalid
    body["count"] = min(count, 100)
    config = body.get("code_config")
    if isinstance(config, dict) and isinstance(config.get("charset"), str):
        charset = "".join(dict.fromkeys(config["charset"]))  # each character once
        if len(charset) >= 2:
            config["charset"] = charset
        else:
            config.pop("charset")
    # Only a body the service refuses for these two rules alone is changed: one generated
    # invalid for another reason stays invalid.
    if _refused_for(body) == {"code_too_long"} and isinstance(config, dict):
        _fit_affixes(config)
    if _refused_for(body) == {"pattern_too_small"}:
        body.pop("code_config", None)
        body["pattern"] = "########"
    return body


def _refused_for(body: dict[str, Any]) -> set[str]:
    """The kinds of error the service finds in a generation's body (none: it is valid)."""
    try:
        GenerationRequest.model_validate_json(orjson.dumps(body))
    except ValidationError as exc:
        return {error["type"] for error in exc.errors()}
    return set()


def _fit_affixes(config: dict[str, Any]) -> None:
    """Shortens a valid prefix and postfix so the code they make holds 64 characters at most."""
    prefix, postfix = config.get("prefix", ""), config.get("postfix", "")
    drawn = config["pattern"] if "pattern" in config else config.get("length")
    if not (isinstance(prefix, str) and isinstance(postfix, str)):
        return
    if isinstance(drawn, str):
        size = len(drawn)
    elif isinstance(drawn, int) and not isinstance(drawn, bool):
        size = drawn
    else:
        return
    room = MAX_CODE_LENGTH - size
    if size > MAX_CODE_LENGTH or len(prefix) + len(postfix) <= room:
        return  # invalid for another reason, or it fits already
    config["prefix"] = prefix[:room]
    config["postfix"] = postfix[: room - len(config["prefix"])]
