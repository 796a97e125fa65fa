"""The errors the service reports; each becomes one application/problem+json response."""

from __future__ import annotations

from typing import Any


class CouponError(Exception):
    """An error with a stable machine-readable ``code`` and its HTTP ``status``."""

    code = "internal_error"
    status = 500
    title = "Internal error"
    sends: tuple[str, ...] = ()  # the response headers it always carries, for the OpenAPI document
    replayed = False  # the stored answer to an Idempotency-Key, given again (pool/keyed.py)

    def __init__(self, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra  # further members of the problem document

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled whole (the upload worker process raises these), not just its message.
        return (_rebuild, (type(self), self.detail, self.headers, self.extra))


def _rebuild(
    cls: type[CouponError], detail: str, headers: dict[str, str], extra: dict[str, Any]
) -> CouponError:
    return cls(detail, headers, **extra)


class InvalidJson(CouponError):
    code, status, title = "invalid_json", 400, "Malformed JSON"


class Unauthenticated(CouponError):
    code, status, title = "unauthenticated", 401, "API key missing or not valid"
    sends = ("WWW-Authenticate",)


class Forbidden(CouponError):
    code, status, title = "forbidden", 403, "Not allowed with this API key"


class NotFound(CouponError):
    code, status, title = "not_found", 404, "Not found"


class MethodNotAllowed(CouponError):
    code, status, title = "method_not_allowed", 405, "Method not allowed"
    sends = ("Allow",)


class UnsupportedMediaType(CouponError):
    code, status, title = "unsupported_media_type", 415, "Unsupported media type"


class NotAcceptable(CouponError):
    """None of the media types the request accepts (Accept) is one the route answers in."""

    code, status, title = "not_acceptable", 406, "Not acceptable"


class ValidationFailed(CouponError):
    code, status, title = "validation_error", 422, "Invalid request"


class QueryTooLong(CouponError):
    code, status, title = "query_too_long", 414, "Query too long"


class BodyTooLarge(CouponError):
    code, status, title = "body_too_large", 413, "Request body too large"


class RequestTimeout(CouponError):
    """Its headers (server.py) or its body (bodies.py) did not arrive in time."""

    code, status, title = "request_timeout", 408, "Request not received in time"


class InvalidHttp(CouponError):
    code, status, title = "invalid_http", 400, "Invalid HTTP request"


class HeadersTooLarge(CouponError):
    code, status, title = "headers_too_large", 431, "Request headers too large"


class TooManyConnections(CouponError):
    code, status, title = "too_many_connections", 503, "Too many connections"
    sends = ("Retry-After",)


class ClientDisconnected(CouponError):
    """The client went away before its body was in: 499 (as nginx logs it), seen only in logs."""

    code, status, title = "client_disconnected", 499, "Client closed the request"


class BadContentLength(CouponError):
    code, status, title = "invalid_content_length", 400, "Invalid Content-Length"


class TooManyCoupons(CouponError):
    code, status, title = "too_many_coupons", 413, "Too many coupons"


class CouponNotFound(CouponError):
    code, status, title = "coupon_not_found", 404, "Coupon not found"


class CouponExpired(CouponError):
    code, status, title = "coupon_expired", 410, "Coupon expired"


class HoldExpired(CouponError):
    code, status, title = "hold_expired", 409, "Hold expired"


class CouponNotYetValid(CouponError):
    code, status, title = "coupon_not_yet_valid", 409, "Coupon not valid yet"


class TypeMismatch(CouponError):
    code, status, title = "type_mismatch", 409, "Coupon type mismatch"


class NotAllocated(CouponError):
    code, status, title = "not_allocated", 409, "Coupon not allocated to this user"


class AlreadyRedeemed(CouponError):
    code, status, title = "already_redeemed", 409, "Coupon already redeemed"


class NotRedeemed(CouponError):
    code, status, title = "not_redeemed", 409, "Coupon not redeemed by this user"


class CouponDisabled(CouponError):
    """The coupon, or its batch, is disabled (POST /v1/coupons/{code}/disable or
    /v1/batches/{batch}/disable)."""

    code, status, title = "coupon_disabled", 409, "Coupon disabled"


class BatchExhausted(CouponError):
    """The coupon's batch has its cap of redemptions (max_redemptions)."""

    code, status, title = "batch_exhausted", 409, "Batch redemption cap reached"


class BatchNotFound(CouponError):
    code, status, title = "batch_not_found", 404, "Batch not found"


class BatchConflict(CouponError):
    """The batch exists, and what the request asks of it contradicts what it is."""

    code, status, title = "batch_conflict", 409, "Batch conflict"


class PatternTooSmall(CouponError):
    """A generation's pattern allows fewer than 10 times the codes asked for."""

    code, status, title = "pattern_too_small", 422, "Pattern too small"


class UserLimitReached(CouponError):
    code, status, title = "user_limit_reached", 409, "User holds the most coupons allowed"


class IdempotencyKeyReused(CouponError):
    """The Idempotency-Key was first sent with another request (method, path or body)."""

    code, status, title = "idempotency_key_reused", 422, "Idempotency-Key used for another request"


class IdempotencyKeyInProgress(CouponError):
    code, status, title = "idempotency_key_in_progress", 409, "Request with this Idempotency-Key under way"
    sends = ("Retry-After",)


class PoolEmpty(CouponError):
    code, status, title = "pool_empty", 409, "No coupon available"


class TooManyFailedLookups(CouponError):
    """The caller's budget of failed coupon lookups is spent (FAILED_LOOKUPS_PER_S)."""

    code, status, title = "too_many_failed_lookups", 429, "Too many failed lookups"
    sends = ("Retry-After",)


class MegadealBusy(CouponError):
    code, status, title = "megadeal_busy", 429, "MEGADEAL limit reached"
    sends = ("Retry-After",)


class StoreUnavailable(CouponError):
    code, status, title = "store_unavailable", 503, "Store unavailable"


class StoreFull(CouponError):
    """Redis is at its maxmemory (or an upload at its share of it): writes are refused."""

    code, status, title = "store_full", 507, "Store full"


class UploadsBusy(CouponError):
    """As many large bodies are being read or written as the process allows (MAX_UPLOADS)."""

    code, status, title = "uploads_busy", 429, "Too many uploads at once"
    sends = ("Retry-After",)


class UploadWorkerLost(CouponError):
    code, status, title = "upload_worker_lost", 503, "Upload worker lost"
    sends = ("Retry-After",)


def _every(cls: type[CouponError]) -> list[type[CouponError]]:
    return [cls] + [c for sub in cls.__subclasses__() for c in _every(sub)]


# Every error by its code: a Lua script's error reply, or a model's error_codes, names
# the error to raise.
BY_CODE: dict[str, type[CouponError]] = {cls.code: cls for cls in _every(CouponError)}
