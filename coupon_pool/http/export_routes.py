"""The export of a batch: GET /v1/batches/{batch}/coupons streams its coupons as JSON Lines or
CSV, a chunk per stretch the store reads (pool/exporting.py). Declared here and listed in
routes.OPERATIONS."""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from datetime import datetime

import orjson

from .. import errors
from ..models import BatchPath, ExportFormat, ExportQuery
from ..results import COUPON_COLUMNS, EXPORT_STATE_COLUMNS, ExportedCoupon
from .auth import Role
from .inputs import Call, Stream
from .routing import Operation

JSON_LINES, CSV = "application/x-ndjson", "text/csv"
MEDIA_TYPES: dict[ExportFormat, str] = {"jsonl": JSON_LINES, "csv": CSV}
# What an Accept media range asks for: the media types, then the ranges that stand for them.
ACCEPTED = {
    "application/x-ndjson": JSON_LINES, "application/jsonl": JSON_LINES, "text/csv": CSV,
    "*/*": JSON_LINES, "application/*": JSON_LINES, "text/*": CSV,
}  # fmt: skip
MAX_MEDIA_RANGES = 32  # of an Accept header: those past it are not read


async def export_coupons(call: Call, path: BatchPath, query: ExportQuery) -> Stream:
    """The batch's coupons, one a line, as JSON Lines (application/x-ndjson) or CSV (text/csv,
    with a header row): code, type, discount (CSV: discount_kind, discount_value),
    expires_at, max_usages, starts_at, metadata, then allocated, used, disabled (on its own
    or with its batch) and created_at; a file `coupon-pool upload` loads back. The format is
    `format` when given, else the first of Accept's preferred media ranges this route
    answers in (application/x-ndjson or application/jsonl, text/csv, application/*,
    text/*, */*), else JSON Lines; an Accept with none of them is 406 not_acceptable.
    Coupons past their expiry are left out unless `expired=true`. Streamed as Redis is read,
    a bounded stretch of codes at a time, in each slot in upload order; no snapshot: each
    coupon is as it was when its stretch was read."""
    media_type = (
        MEDIA_TYPES[query.format] if query.format else negotiated(call.request.headers.getlist("accept"))
    )
    stretches = await call.store.export(path.batch, expired=query.expired)
    call.note(batch=path.batch, format=media_type)
    return Stream(media_type, _chunks(call, stretches, media_type))


def negotiated(accept: Sequence[str]) -> str:
    """The media type Accept (its headers' values) prefers among those of an export; JSON
    Lines without one. NotAcceptable when it accepts none of them."""
    best, best_q = None, 0.0
    ranges = [r for value in accept for r in value.split(",")][:MAX_MEDIA_RANGES]
    if not any(r.strip() for r in ranges):
        return JSON_LINES
    for media_range in ranges:
        name, *parameters = media_range.split(";")
        found = ACCEPTED.get(name.strip().lower())
        q = _quality(parameters)
        if found and q > best_q:
            best, best_q = found, q
    if best is None:
        raise errors.NotAcceptable(
            "an export is answered as application/x-ndjson or text/csv (or ?format=jsonl|csv); "
            f"Accept allows neither: {', '.join(accept)[:200]!r}"
        )
    return best


def _quality(parameters: list[str]) -> float:
    """A media range's q (1 without one; 0, refused, when it is not a number from 0 to 1)."""
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value)
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


async def _chunks(
    call: Call, stretches: AsyncIterator[list[ExportedCoupon]], media_type: str
) -> AsyncGenerator[bytes, None]:
    encode: Callable[[list[ExportedCoupon]], bytes] = _json_lines if media_type == JSON_LINES else _csv_rows
    count = 0
    try:
        if media_type == CSV:
            yield _CSV_HEADER
        async for rows in stretches:
            count += len(rows)
            yield encode(rows)
    finally:
        call.note(coupons=count)


def _json_lines(rows: list[ExportedCoupon]) -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "code": r.code,
                "type": r.type,
                "discount": {"kind": r.discount.kind, "value": r.discount.value},
                "expires_at": r.expires_at,
                "max_usages": r.max_usages,
                "starts_at": r.starts_at,
                "metadata": orjson.Fragment(r.metadata_json),
                "allocated": r.allocated,
                "used": r.used,
                "disabled": r.disabled,
                "created_at": r.created_at,
            },
            option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE,
        )
        for r in rows
    )


def _csv_rows(rows: list[ExportedCoupon]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerows(
        (
            r.code, r.type.value, r.discount.kind, r.discount.value, _time(r.expires_at), r.max_usages,
            _time(r.starts_at) if r.starts_at else "", r.metadata_json, r.allocated, r.used,
            "true" if r.disabled else "false", _time(r.created_at),
        )
        for r in rows
    )  # fmt: skip
    return out.getvalue().encode()


_CSV_HEADER = ",".join((*COUPON_COLUMNS, *EXPORT_STATE_COLUMNS)).encode() + b"\r\n"


@functools.lru_cache(maxsize=4096)  # a batch's expiries recur, and so do its creation times
def _time(moment: datetime) -> str:
    """A time as the JSON answers write it (RFC 3339, UTC, Z)."""
    return orjson.dumps(moment, option=orjson.OPT_UTC_Z)[1:-1].decode()


EXPORT_OPERATIONS = (
    Operation(
        method="GET", path="/v1/batches/{batch}/coupons", handler=export_coupons, tag="batches",
        summary="A batch's coupons, streamed as JSON Lines or CSV", role=Role.ADMIN,
        path_params=BatchPath, query=ExportQuery, streams=(JSON_LINES, CSV),
        errors=(errors.BatchNotFound, errors.NotAcceptable),
    ),
)  # fmt: skip
