"""Validating a JSON request body: pydantic's rules, and no field given twice.

JSON allows an object to repeat a name, and parsers disagree on which value wins (pydantic
keeps the last). A body such as {"user_id": "a", "user_id": "b"} is ambiguous: a proxy
or a log reader may see "a" where the service acts on "b". So it is refused, naming the
field. jiter (the parser pydantic is built on) finds a repeated name in about 0.4 us for
an allocation body and 60 ms for a 50,000-coupon upload; only a refused body pays for
finding where the repeat is.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import jiter
from pydantic import BaseModel, ValidationError

from ..errors import ValidationFailed
from .problems import field_error, from_validation_error, invalid_fields

Body = TypeVar("Body", bound=BaseModel)


def validate_json(body: bytes, model: type[Body]) -> Body:
    """``body`` validated as ``model``; else raise its CouponError (400, 413 or 422)."""
    try:
        value = model.model_validate_json(body)
    except ValidationError as exc:
        raise from_validation_error(exc, model) from None
    try:
        jiter.from_json(body, catch_duplicate_keys=True, cache_mode="none")
    except ValueError:
        raise _repeated_field(body) from None
    return value


class _Repeated(dict[str, Any]):
    """An object in which ``key`` appears more than once."""

    key = ""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) == len(pairs):
        return value
    repeated = _Repeated(value)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            repeated.key = key
            break
        seen.add(key)
    return repeated


def _find(value: Any, loc: tuple[int | str, ...]) -> tuple[int | str, ...] | None:
    """The location of the first repeated name in ``value``, depth first in document order."""
    if isinstance(value, _Repeated):
        return (*loc, value.key)
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    else:
        return None
    for name, child in children:
        found = _find(child, (*loc, name))
        if found:
            return found
    return None


def _repeated_field(body: bytes) -> ValidationFailed:
    loc = _find(json.loads(body, object_pairs_hook=_pairs), ())
    assert loc, "jiter found a repeated name that json did not"
    return invalid_fields([field_error(loc, "appears more than once in the same object: send it once")], 1)
