"""The OpenAPI 3.1 document, generated from the route table and the pydantic models."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode
from starlette.requests import Request
from starlette.responses import Response

from . import __version__
from .auth import Role
from .errors import CouponError, Forbidden, StoreUnavailable, Unauthenticated
from .models import CODE_PATTERN, Problem

_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    """One route, with what the OpenAPI document says of it."""

    method: str
    path: str
    endpoint: Callable[[Request], Awaitable[Response]]
    summary: str
    request: type[BaseModel] | None = None
    response: type[Any] | None = None  # a pydantic model or a dataclass
    status: int = 200
    errors: tuple[type[CouponError], ...] = ()
    query: type[BaseModel] | None = None
    media_type: str = "application/json"
    role: Role | None = Role.CLIENT  # the API key it needs; None: open to anyone


def openapi_document(operations: Sequence[Operation]) -> dict[str, Any]:
    models: dict[tuple[str, JsonSchemaMode], TypeAdapter[Any]] = {
        (Problem.__name__, "serialization"): TypeAdapter(Problem)
    }
    for op in operations:
        if op.request:
            models[(op.request.__name__, "validation")] = TypeAdapter(op.request)
        if op.response:
            models[(op.response.__name__, "serialization")] = TypeAdapter(op.response)
    refs, schema = TypeAdapter.json_schemas(
        [(name, mode, adapter) for (name, mode), adapter in models.items()], ref_template=_REF
    )

    def ref(model: type[Any], mode: JsonSchemaMode) -> dict[str, Any]:
        return refs[(model.__name__, mode)]

    problem = {"application/problem+json": {"schema": ref(Problem, "serialization")}}
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        if op.response:
            body = ref(op.response, "serialization")
        else:
            body = {"type": "object"} if op.media_type == "application/json" else {"type": "string"}
        responses: dict[str, Any] = {
            str(op.status): {"description": op.summary, "content": {op.media_type: {"schema": body}}}
        }
        by_status: dict[int, list[str]] = {}
        documented: tuple[type[CouponError], ...] = (*op.errors, StoreUnavailable)
        if op.role is not None:
            documented += (Unauthenticated,) if op.role is Role.CLIENT else (Unauthenticated, Forbidden)
        for error in documented:
            by_status.setdefault(error.status, []).append(error.code)
        for status, codes in sorted(by_status.items()):
            responses[str(status)] = {"description": "code: " + ", ".join(codes), "content": problem}
        entry: dict[str, Any] = {
            "summary": op.summary,
            "operationId": op.endpoint.__name__,
            "responses": responses,
            # With keys configured (the deployment default); without any, every route is open.
            "security": [{"apiKey": []}] if op.role is not None else [],
        }
        if op.role is Role.ADMIN:
            entry["description"] = "Needs an admin API key."
        if op.path.endswith("{code}"):
            entry["parameters"] = [
                {
                    "name": "code",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": CODE_PATTERN},
                }
            ]
        if op.query:
            entry["parameters"] = _query_parameters(op.query)
        if op.request:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(op.request, "validation")}},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "coupon-pool", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key: admin (everything) or client (allocate, redeem, read).",
                }
            },
        },
    }


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(mode="validation")
    return [
        {
            "name": name,
            "in": "query",
            "required": name in schema.get("required", ()),
            "description": prop.get("description", ""),
            "schema": _query_schema(prop),
        }
        for name, prop in schema["properties"].items()
    ]


def _query_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A property's schema as a query parameter: an absent parameter, not null, stands for None."""
    schema = {k: v for k, v in prop.items() if k not in ("title", "description", "anyOf")}
    present = [s for s in prop.get("anyOf", ()) if s.get("type") != "null"]
    if len(present) == 1:
        schema.update(present[0])
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema
