"""The OpenAPI 3.1 document, derived from the operations' declarations and the pydantic models."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from .. import __version__
from ..errors import CouponError
from ..pool.keyed import HEADER, KEY_PATTERN, REPLAYED_HEADER
from ..results import Problem
from .auth import Role
from .routing import Operation

_REF = "#/components/schemas/{model}"
_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The caller's X-Request-ID when it is 1-128 visible ASCII characters, "
        "else one made by the service; the request's log line carries the same",
        "schema": {"type": "string", "pattern": r"^[\x21-\x7e]{1,128}$"},
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    },
    "WWW-Authenticate": {
        "description": 'The scheme to authenticate with: Bearer realm="coupon-pool"',
        "schema": {"type": "string"},
    },
    "Allow": {"description": "The methods the route allows", "schema": {"type": "string"}},
    REPLAYED_HEADER: {
        "description": "true: this is the stored answer to an earlier request with the same "
        "Idempotency-Key, not a new effect",
        "schema": {"type": "string", "enum": ["true"]},
    },
}
_IDEMPOTENCY_PARAMETER = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": "Any unique value per intended effect (a UUID, say), scoped to the API key. "
    "Sent again within IDEMPOTENCY_TTL_S with the same request, it gets the first answer again "
    "(with Idempotent-Replayed: true) instead of a second effect. Stored: successes and the "
    "operation's own 4xx answers; never validation errors, 429 or 5xx.",
    "schema": {"type": "string", "pattern": KEY_PATTERN},
}
_TAGS = [
    {"name": "coupons", "description": "Upload, allocate, redeem and look up coupons"},
    {"name": "pool", "description": "The pool as a whole: counters, purge, audit trail"},
    {
        "name": "batches",
        "description": "Campaigns: batches of coupons, disabled, capped, generated, exported",
    },
    {"name": "operations", "description": "Health, readiness, metrics and this document"},
]
_INFO = {
    "title": "coupon-pool",
    "version": __version__,
    "summary": "A Redis-native, high-throughput coupon pool",
    "description": "Bulk-load coupons, allocate one to a user, record its use. Errors are "
    "application/problem+json (RFC 9457) with a stable `code`.",
    "contact": {"name": "coupon-pool maintainers"},
    "license": {"name": "Proprietary", "identifier": "LicenseRef-Proprietary"},
}


def openapi_document(operations: Sequence[Operation], server_url: str = "/") -> dict[str, Any]:
    models: dict[tuple[str, JsonSchemaMode], TypeAdapter[Any]] = {
        (Problem.__name__, "serialization"): TypeAdapter(Problem)
    }
    for op in operations:
        for model, mode in ((op.body, "validation"), (op.response, "serialization")):
            if model is not None:
                models[(model.__name__, mode)] = TypeAdapter(model)  # type: ignore[index]
    refs, schema = TypeAdapter.json_schemas(
        [(name, mode, adapter) for (name, mode), adapter in models.items()], ref_template=_REF
    )
    schemas = schema.get("$defs", {})
    for name, definition in schemas.items():
        if "-" in name:  # "Discount-Input" and "-Output" differ: give each a title of its own
            definition["title"] = name.replace("-", "")
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        path = re.sub(r"{(\w+):\w+}", r"{\1}", op.path)  # a Starlette convertor is not OpenAPI's
        paths.setdefault(path, {})[op.method.lower()] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": _INFO,
        "servers": [{"url": server_url, "description": "this service"}],
        "tags": _TAGS,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "headers": _HEADERS,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key: admin (everything) or client (allocate, redeem, read).",
                }
            },
        },
    }


def _operation(op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    if op.response is not None:
        body = refs[(op.response.__name__, "serialization")]
    else:
        body = {"type": "object"} if op.media_type == "application/json" else {"type": "string"}
    # A streamed answer is text of one of its media types (its rows: see the description).
    content = {m: {"schema": {"type": "string"}} for m in op.streams} or {op.media_type: {"schema": body}}
    responses = {
        str(op.status): {
            "description": op.summary,
            "headers": _header_refs((REPLAYED_HEADER,) if op.idempotent else ()),
            "content": content,
        }
    }
    problem = {"application/problem+json": {"schema": refs[(Problem.__name__, "serialization")]}}
    by_status: dict[int, list[type[CouponError]]] = {}
    for error in op.all_errors():
        by_status.setdefault(error.status, []).append(error)

    def replayable(status: int) -> bool:  # a stored answer: the operation's own 4xx
        return op.idempotent and status < 500

    for status, found in sorted(by_status.items()):
        responses[str(status)] = {
            "description": "code: " + ", ".join(e.code for e in found),
            "headers": _header_refs(
                [h for e in found for h in e.sends] + ([REPLAYED_HEADER] if replayable(status) else [])
            ),
            "content": problem,
        }
    entry: dict[str, Any] = {
        "summary": op.summary,
        "description": "",
        "operationId": op.handler.__name__,
        "tags": [op.tag],
        "responses": responses,
        # With keys configured (the deployment default); without any, every route is open.
        "security": [{"apiKey": []}] if op.role is not None else [],
    }
    entry["description"] = " ".join((op.handler.__doc__ or "").split())
    if op.role is Role.ADMIN:
        entry["description"] += " Needs an admin API key."
    parameters = [
        *(_parameters(op.path_params, "path") if op.path_params else ()),
        *(_parameters(op.query, "query") if op.query else ()),
        *((_IDEMPOTENCY_PARAMETER,) if op.idempotent else ()),
    ]
    if parameters:
        entry["parameters"] = parameters
    if op.body:
        entry["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(op.body.__name__, "validation")]}},
        }
    return entry


def _header_refs(names: Any) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in ("X-Request-ID", *names)}


def _parameters(model: type[BaseModel], where: str) -> list[dict[str, Any]]:
    schema = model.model_json_schema(mode="validation")
    return [
        {
            "name": name,
            "in": where,
            "required": name in schema.get("required", ()),
            "description": prop.get("description", name),
            "schema": _parameter_schema(prop),
        }
        for name, prop in schema["properties"].items()
    ]


def _parameter_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A property's schema as a parameter: an absent parameter, not null, stands for None."""
    schema = {k: v for k, v in prop.items() if k not in ("title", "description", "anyOf")}
    present = [s for s in prop.get("anyOf", ()) if s.get("type") != "null"]
    if len(present) == 1:
        schema.update(present[0])
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema
