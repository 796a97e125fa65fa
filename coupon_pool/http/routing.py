"""An operation declared once: method, path, inputs, answer and errors, by keyword.

From an ``Operation`` come both its endpoint (endpoint.py: the inputs read and validated,
the handler called, the answer encoded) and its part of the OpenAPI document (openapi.py),
so the two cannot drift apart. A handler gets a ``Call`` and its validated inputs by name
(``body``, ``query``, ``path``) and returns its answer: a model, a dataclass or bytes; or,
for an operation that ``streams``, an ``inputs.Stream`` of chunks sent as they are made.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import errors
from ..errors import CouponError
from .auth import ApiKeys, Role
from .endpoint import Endpoint
from .inputs import Handler, Services
from .lookups import Lookup

# The errors any operation with a JSON body can answer before its handler runs.
BODY_ERRORS: tuple[type[errors.CouponError], ...] = (
    errors.InvalidJson,
    errors.RequestTimeout,
    errors.BadContentLength,
    errors.BodyTooLarge,
    errors.UnsupportedMediaType,
    errors.ValidationFailed,
)
# What every route can answer: no such route or method, or a fault of the service.
ANY_ROUTE_ERRORS: tuple[type[errors.CouponError], ...] = (
    errors.NotFound,
    errors.MethodNotAllowed,
    errors.CouponError,
    # Answered by the connection layer (server.py), before the app sees the request.
    errors.InvalidHttp,
    errors.RequestTimeout,
    errors.HeadersTooLarge,
    errors.TooManyConnections,
)


@dataclass(frozen=True, kw_only=True)
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: type[BaseModel] | None = None
    response: type[Any] | None = None  # a pydantic model or a dataclass; None: bytes of media_type
    status: int = 200
    media_type: str = "application/json"
    streams: tuple[str, ...] = ()  # its answer is a Stream in one of these, chosen per request
    errors: tuple[type[CouponError], ...] = ()  # those its handler raises
    role: Role | None = Role.CLIENT  # the API key it needs; None: open to anyone
    uses_store: bool = True  # it calls Redis, so it can answer 503 store_unavailable
    large_body: bool = False  # its body may reach MAX_BODY_BYTES, and reaches the handler as bytes
    idempotent: bool = False  # it takes an Idempotency-Key (pool/keyed.py)
    lookup: Lookup | None = None  # it looks a coupon up by code: see Lookup

    def all_errors(self) -> tuple[type[CouponError], ...]:
        """Every error this operation can answer, derived from what it declares."""
        found: list[type[CouponError]] = list(self.errors)
        if self.body:
            found += BODY_ERRORS
        if self.large_body:
            found.append(errors.UploadsBusy)
        if self.idempotent:
            found += (errors.ValidationFailed, errors.IdempotencyKeyReused, errors.IdempotencyKeyInProgress)
        if self.query:
            found.append(errors.QueryTooLong)
        if self.query or self.path_params:
            found.append(errors.ValidationFailed)
        if self.lookup is not None:
            found.append(errors.TooManyFailedLookups)
        if self.role is not None:
            found.append(errors.Unauthenticated)
        if self.role is Role.ADMIN:
            found.append(errors.Forbidden)
        if self.uses_store:
            found.append(errors.StoreUnavailable)
        if self.method in ("POST", "PATCH"):  # a change: refused when Redis is at its maxmemory
            found.append(errors.StoreFull)
        found += ANY_ROUTE_ERRORS
        return tuple(dict.fromkeys(found))

    def endpoint(self, services: Services, api_keys: ApiKeys) -> Endpoint:
        """Its ASGI app (endpoint.py): inputs validated, the handler called, its answer encoded."""
        return Endpoint(self, services, api_keys)


class Shortcuts:
    """Pure ASGI middleware: a request for a route with a fixed path (no parameter) and its
    method goes straight to the route's endpoint, past Starlette's exception middleware and
    router (several microseconds a request). Everything else goes on to the router: another
    method (405 with Allow), a path with parameters, HEAD, a path under a root_path, no route
    (404). The endpoint answers its own errors (endpoint.py), as it does behind the router.
    """

    def __init__(self, app: ASGIApp, routes: Iterable[Route]) -> None:
        self.app = app
        self.routes = {
            (method, route.path): route
            for route in routes
            if "{" not in route.path
            for method in route.methods or ()
            if method != "HEAD"
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            route = self.routes.get((scope["method"], scope["path"]))
            if route is not None:
                scope["route"] = route  # as the router would set it: the metrics' route label
                await route.app(scope, receive, send)
                return
        await self.app(scope, receive, send)
