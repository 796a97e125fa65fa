"""Coupon files as ``coupon-pool upload`` reads them: CSV with a header row, or JSON Lines.

Each coupon becomes the JSON of an upload's item (``Item``), or a problem named by file,
line and column (``BadItem``), checked with the service's own rules, so a bad line stops
an upload before anything is sent. A CSV metadata cell holds the JSON object as text. The
state an export writes beside a coupon (allocated, used, disabled, created_at: a column,
or a field of a line) is read past, so an exported file loads back as it is.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import jiter
import orjson

from ..errors import CouponError
from ..http.validation import validate_json
from ..models import MAX_METADATA_KEYS, MAX_METADATA_VALUE, CouponIn
from ..results import COUPON_COLUMNS, EXPORT_STATE_COLUMNS

COLUMNS = COUPON_COLUMNS
REQUIRED_COLUMNS = ("code", "discount_kind", "discount_value", "expires_at")
# A valid coupon takes about 150 bytes, and its metadata up to MAX_METADATA_KEYS keys of 40
# ASCII characters and values of MAX_METADATA_VALUE characters, which JSON may write as
# escapes: 6 bytes a key character ("\u0061"), 12 a value character (a surrogate pair,
# "\ud83d\ude00"); in a CSV cell its quotes are doubled. The longest valid line fits.
MAX_LINE_BYTES = 1024 + MAX_METADATA_KEYS * (6 * 40 + 12 * MAX_METADATA_VALUE + 16)


@dataclass(frozen=True)
class Item:
    """One coupon of a file, as the JSON of an upload's item, and where it came from."""

    path: str
    line: int
    body: bytes


@dataclass(frozen=True)
class BadItem:
    path: str
    line: int
    column: str  # a CSV column, or a JSON field path
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.column}: {self.message}"


class Unreadable(Exception):
    """A file that cannot be opened or read: gone, not permitted, an I/O error."""


def read(path: Path, *, check: bool = True) -> Iterator[Item | BadItem]:
    """The coupons of ``path`` in file order: CSV with a header row, or JSON Lines; raises
    Unreadable when the file cannot be read (at any point: it may go while it is read).

    ``check``: validate each as the service will; off for a file validated already (the
    service validates again what it receives).
    """
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            yield from _json_lines(path, check)
        else:
            yield from _csv_rows(path, check)
    except OSError as exc:
        raise Unreadable(f"{path}: cannot be read: {exc.strerror or exc}") from exc


def _json_lines(path: Path, check: bool) -> Iterator[Item | BadItem]:
    with path.open("rb") as binary:
        for number, line in _lines(binary):
            if line is None:
                yield BadItem(str(path), number, "(line)", TOO_LONG)
            elif line.strip():
                item = Item(str(path), number, _without_state(line.strip()))
                yield _checked(item, csv_columns=False) if check else item


def _csv_rows(path: Path, check: bool) -> Iterator[Item | BadItem]:
    # The csv module refuses a cell over 128 KiB (a setting of the process, only raised
    # here): a metadata cell of a valid coupon may take most of a line.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
    with path.open("rb") as binary:
        lines = _CsvLines(binary)
        rows = csv.reader(lines, strict=True)
        try:
            header = next(rows, None)
        except (csv.Error, UnicodeDecodeError) as exc:
            yield BadItem(str(path), 1, "(header)", str(exc))
            return
        problem = TOO_LONG if lines.too_long else _header_problem(header)
        if problem:
            yield BadItem(str(path), 1, "(header)", problem)
            return
        assert header is not None
        names = [name.strip() for name in header]
        while True:
            failed = None
            try:
                row = next(rows, None)
            except (csv.Error, UnicodeDecodeError) as exc:
                row, failed = None, BadItem(str(path), lines.number, "(line)", str(exc))
            for number in lines.too_long:  # met before this row's lines
                yield BadItem(str(path), number, "(line)", TOO_LONG)
            lines.too_long.clear()
            if failed:
                yield failed
            if row is None:
                return
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(names):
                message = f"has {len(row)} cells; the header names {len(names)} columns"
                yield BadItem(str(path), rows.line_num, "(line)", message)
                continue
            coupon = _coupon_of(dict(zip(names, row, strict=True)))
            if isinstance(coupon, str):
                yield BadItem(str(path), rows.line_num, "metadata", coupon)
                continue
            item = Item(str(path), rows.line_num, orjson.dumps(coupon))
            yield _checked(item, csv_columns=True) if check else item


TOO_LONG = f"longer than {MAX_LINE_BYTES} bytes"


def _lines(binary: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(number, line) of each line of ``binary``; the line None when it is over
    MAX_LINE_BYTES (its line break aside), in which case no more of it is kept."""
    number = 0
    while line := binary.readline(MAX_LINE_BYTES + 2):  # the most a line and its \r\n take
        number += 1
        cut = len(line) == MAX_LINE_BYTES + 2 and not line.endswith(b"\n")
        while cut and (rest := binary.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
            pass
        yield number, None if cut or len(line.rstrip(b"\r\n")) > MAX_LINE_BYTES else line


class _CsvLines:
    """A CSV file's lines as text for csv.reader; a line over MAX_LINE_BYTES is noted in
    ``too_long`` and read as an empty line (a row the reader skips)."""

    def __init__(self, binary: BinaryIO) -> None:
        self._lines = _lines(binary)
        self.number = 0  # the line read last
        self.too_long: list[int] = []

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        self.number, line = next(self._lines)
        if line is None:
            self.too_long.append(self.number)
            return "\n"
        return (line.removeprefix(codecs.BOM_UTF8) if self.number == 1 else line).decode()


_STATE_KEYS = tuple(f'"{name}"'.encode() for name in EXPORT_STATE_COLUMNS)


def _without_state(line: bytes) -> bytes:
    """A line as an upload's item: the state fields of an exported line left out. A line
    that does not read as a JSON object is kept as it is, for validation to name why."""
    if not any(key in line for key in _STATE_KEYS):
        return line
    try:
        value = jiter.from_json(line, catch_duplicate_keys=True, cache_mode="none")
    except ValueError:
        return line
    if not isinstance(value, dict):
        return line
    for name in EXPORT_STATE_COLUMNS:
        value.pop(name, None)
    try:
        return orjson.dumps(value)
    except TypeError:  # a number past 64 bits: as written, validation names it
        return line


def _header_problem(header: list[str] | None) -> str | None:
    if not header:
        return "the file is empty: its first row must name the columns"
    names = [name.strip() for name in header]
    unknown = [name for name in names if name not in COLUMNS and name not in EXPORT_STATE_COLUMNS]
    if unknown:
        return f"unknown column {unknown[0]!r}; the columns are: {', '.join(COLUMNS)}"
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        return f"no column {missing[0]!r}; required: {', '.join(REQUIRED_COLUMNS)}"
    if len(set(names)) != len(names):
        return "a column is named twice"
    return None


def _coupon_of(cells: dict[str, str]) -> dict[str, Any] | str:
    """A CSV row as an upload's item; an empty optional cell takes the service's default.
    A metadata cell that is not a JSON object gives the problem instead."""
    coupon: dict[str, Any] = {
        "code": cells["code"],
        "discount": {"kind": cells["discount_kind"], "value": cells["discount_value"]},
        "expires_at": cells["expires_at"],
    }
    if cells.get("type", "").strip():
        coupon["type"] = cells["type"]
    usages = cells.get("max_usages", "").strip()
    if usages:
        # A number when it is one; otherwise the text, which validation names.
        coupon["max_usages"] = _count(usages) if usages.isascii() and usages.isdigit() else usages
    if cells.get("starts_at", "").strip():
        coupon["starts_at"] = cells["starts_at"]
    if cells.get("metadata", "").strip():
        metadata = _json_object(cells["metadata"])
        if isinstance(metadata, str):
            return metadata
        coupon["metadata"] = metadata
    return coupon


METADATA_EXAMPLE = '{"campaign": "spring"}'


def _json_object(text: str) -> orjson.Fragment | str:
    """A cell's JSON object, to be sent as it is written (validation then sees what the
    service will: a number too large for orjson, say), or what is wrong with it. A name
    given twice is refused here, as the service refuses it in a body."""
    try:
        value = jiter.from_json(text.encode(), catch_duplicate_keys=True, cache_mode="none")
    except ValueError as exc:
        return f"must be a JSON object such as {METADATA_EXAMPLE}: {exc}"
    if not isinstance(value, dict):
        kind = _JSON_KINDS.get(type(value), "a number")
        return f"must be a JSON object such as {METADATA_EXAMPLE}, not {kind}"
    return orjson.Fragment(text.encode())


_JSON_KINDS = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}


MAX_COUNT_DIGITS = 18  # far more than a valid count has, and within JSON's 64-bit integers


def _count(digits: str) -> int:
    """A cell of digits as a number. Past MAX_COUNT_DIGITS (leading zeros aside), a number
    too large, which validation names: Python refuses to convert over 4,300 digits
    (ValueError), and the JSON encoder integers over 64 bits (TypeError)."""
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= MAX_COUNT_DIGITS else 10**MAX_COUNT_DIGITS


_CSV_COLUMN_OF = {
    "discount": "discount_kind",
    "discount.kind": "discount_kind",
    "discount.value": "discount_value",
}


def _checked(item: Item, *, csv_columns: bool) -> Item | BadItem:
    """The item, validated as the service validates an upload's coupon."""
    try:
        validate_json(item.body, CouponIn)
    except CouponError as exc:
        listed = exc.extra.get("errors") or [{"field": "(line)", "message": exc.detail}]
        where, message = listed[0]["field"], listed[0]["message"]
        column = _CSV_COLUMN_OF.get(where, where) if csv_columns else where
        if csv_columns and where.startswith("metadata."):  # a key of the cell's object, or its value
            key = where.removeprefix("metadata.")
            what = (
                f"key {key.removesuffix('.[key]')!r}" if key.endswith(".[key]") else f"the value of {key!r}"
            )
            column, message = "metadata", f"{what}: {message}"
        others = exc.extra.get("error_count", 1) - 1
        more = f" (and {others} more problem(s) on this line)" if others > 0 else ""
        return BadItem(item.path, item.line, column, message + more)
    return item
