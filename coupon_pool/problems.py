"""Turning errors into RFC 9457 application/problem+json responses, and pydantic errors into data."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError
from starlette.responses import Response

from .errors import CouponError, InvalidJson, TooManyCoupons, ValidationFailed
from .models import MAX_UPLOAD

MAX_LISTED_ERRORS = 100
MEDIA_TYPE = "application/problem+json"


def problem_response(error: CouponError) -> Response:
    body: dict[str, Any] = {
        "type": f"urn:coupon-pool:problem:{error.code}",
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
        **error.extra,
    }
    return Response(
        orjson.dumps(body), status_code=error.status, headers=error.headers, media_type=MEDIA_TYPE
    )


def from_validation_error(exc: ValidationError) -> CouponError:
    """The CouponError for a body pydantic refused: 400, 413 or 422 with the bad fields listed."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return InvalidJson(f"the body is not valid JSON: {errors[0]['msg']}")
    if any(e["type"] == "too_long" and e["loc"] == ("coupons",) for e in errors):
        return TooManyCoupons(f"an upload holds at most {MAX_UPLOAD} coupons")
    return invalid_fields([field_error(e["loc"], e["msg"]) for e in errors[:MAX_LISTED_ERRORS]], len(errors))


def invalid_fields(listed: list[dict[str, Any]], count: int) -> ValidationFailed:
    """The 422 for ``count`` invalid fields, of which ``listed`` (made by field_error) are shown."""
    first = listed[0]
    where = f"coupon {first['index']}, " if "index" in first else ""
    return ValidationFailed(
        f"{count} invalid field(s); first: {where}{first['field']}: {first['message']}",
        errors=listed,
        error_count=count,
    )


def field_error(loc: tuple[int | str, ...], message: str) -> dict[str, Any]:
    error: dict[str, Any] = {}
    if len(loc) >= 2 and loc[0] == "coupons" and isinstance(loc[1], int):
        error["index"] = loc[1]
        loc = loc[2:]
    # A discriminated union puts the tag ("flat", "percent") into the location: leave it out.
    parts = [
        str(p)
        for i, p in enumerate(loc)
        if not (i > 0 and loc[i - 1] == "discount" and p in ("flat", "percent"))
    ]
    error["field"] = ".".join(parts) or "(body)"
    error["message"] = message
    return error
