"""``coupon-pool upload FILE...``: coupons from CSV or JSON Lines files, any number of them.

Each file is read twice: once to validate every coupon with the service's own rules (so a
bad line 190,000 stops the upload before anything is sent), then to send the coupons in
uploads of at most --batch. Each upload carries an Idempotency-Key derived from its bytes
and its position in the run, so running the same command again after an interruption
stores what is missing and counts nothing twice.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import http.client
import os
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from ..errors import CouponError
from ..http.validation import validate_json
from ..models import MAX_UPLOAD, CouponIn
from .common import ADMIN_KEY_ENV, URL_ENV, ProgressLine, service_url

# Exit codes, as README lists them.
DONE, FAILED, USAGE, INVALID_DATA = 0, 1, 2, 65
COLUMNS = ("code", "type", "discount_kind", "discount_value", "expires_at", "max_usages")
REQUIRED_COLUMNS = ("code", "discount_kind", "discount_value", "expires_at")
MAX_LINE_BYTES = 4096  # a valid coupon takes about 150
MAX_SHOWN_ERRORS = 20
TIMEOUT_S = 120.0  # one upload of 50,000 takes about a second; a loaded service, longer


class UploadFailed(Exception):
    """The service refused an upload or could not be reached: exit FAILED."""


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


def read(path: Path, *, check: bool = True) -> Iterator[Item | BadItem]:
    """The coupons of ``path`` in file order: CSV with a header row, or JSON Lines.

    ``check``: validate each as the service will; off for a file validated already (the
    service validates again what it receives).
    """
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        yield from _json_lines(path, check)
    else:
        yield from _csv_rows(path, check)


def _json_lines(path: Path, check: bool) -> Iterator[Item | BadItem]:
    with path.open("rb") as lines:
        number = 0
        while line := lines.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                yield BadItem(str(path), number, "(line)", f"longer than {MAX_LINE_BYTES} bytes")
                while (rest := lines.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                    pass
                continue
            if line.strip():
                item = Item(str(path), number, line.strip())
                yield _checked(item, csv_columns=False) if check else item


def _csv_rows(path: Path, check: bool) -> Iterator[Item | BadItem]:
    with path.open(newline="", encoding="utf-8-sig") as text:
        rows = csv.reader(text, strict=True)
        try:
            header = next(rows, None)
        except (csv.Error, UnicodeDecodeError) as exc:
            yield BadItem(str(path), 1, "(header)", str(exc))
            return
        problem = _header_problem(header)
        if problem:
            yield BadItem(str(path), 1, "(header)", problem)
            return
        assert header is not None
        names = [name.strip() for name in header]
        while True:
            try:
                row = next(rows, None)
            except (csv.Error, UnicodeDecodeError) as exc:
                yield BadItem(str(path), rows.line_num, "(line)", str(exc))
                return
            if row is None:
                return
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(names):
                message = f"has {len(row)} cells; the header names {len(names)} columns"
                yield BadItem(str(path), rows.line_num, "(line)", message)
                continue
            coupon = _coupon_of(dict(zip(names, row, strict=True)))
            item = Item(str(path), rows.line_num, orjson.dumps(coupon))
            yield _checked(item, csv_columns=True) if check else item


def _header_problem(header: list[str] | None) -> str | None:
    if not header:
        return "the file is empty: its first row must name the columns"
    names = [name.strip() for name in header]
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        return f"unknown column {unknown[0]!r}; the columns are: {', '.join(COLUMNS)}"
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        return f"no column {missing[0]!r}; required: {', '.join(REQUIRED_COLUMNS)}"
    if len(set(names)) != len(names):
        return "a column is named twice"
    return None


def _coupon_of(cells: dict[str, str]) -> dict[str, Any]:
    """A CSV row as an upload's item; an empty optional cell takes the service's default."""
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
        coupon["max_usages"] = int(usages) if usages.isascii() and usages.isdigit() else usages
    return coupon


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
        where = listed[0]["field"]
        column = _CSV_COLUMN_OF.get(where, where) if csv_columns else where
        others = exc.extra.get("error_count", 1) - 1
        more = f" (and {others} more problem(s) on this line)" if others > 0 else ""
        return BadItem(item.path, item.line, column, listed[0]["message"] + more)
    return item


@dataclass
class Totals:
    coupons: int = 0
    created: int = 0
    duplicates: int = 0
    shown_duplicates: list[str] = field(default_factory=list)


class Progress:
    """A bar redrawn in place on a terminal; else a plain line every ``every_s`` seconds."""

    def __init__(self, total: int, stream: TextIO, every_s: float, enabled: bool) -> None:
        self.total, self.every_s, self.enabled = total, every_s, enabled
        self.line = ProgressLine(stream)
        self.terminal = self.line.terminal
        self.started = time.monotonic()
        self.shown_at = 0.0
        self.shown = -1  # coupons sent, as last shown

    def show(self, totals: Totals, *, last: bool = False) -> None:
        if not self.enabled or totals.coupons == self.shown:
            return
        now = time.monotonic()
        if not last and now - self.shown_at < (0.1 if self.terminal else self.every_s):
            return
        self.shown_at, self.shown = now, totals.coupons
        elapsed = max(now - self.started, 1e-9)
        rate = totals.coupons / elapsed
        left = (self.total - totals.coupons) / rate if rate else float("inf")
        figures = (f"{totals.coupons:,}/{self.total:,} coupons sent, {totals.created:,} created, "
                   f"{totals.duplicates:,} duplicates, {rate:,.0f}/s, "
                   f"{_duration(left)} left")  # fmt: skip
        if self.terminal:
            done = totals.coupons / self.total if self.total else 1.0
            self.line.tick(f"[{'#' * round(24 * done):<24}] {figures}")
        else:
            self.line.tick(f"upload: {figures}")
        if last:
            self.line.end()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Service:
    """POST /v1/coupons on one keep-alive connection, with retries that are safe to make."""

    def __init__(self, url: str, api_key: str | None, stream: TextIO, retries: int) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"--url must be http(s)://host[:port], not {url!r}")
        self.scheme, self.host, self.port = parsed.scheme, parsed.hostname, parsed.port
        self.path = parsed.path.rstrip("/") + "/v1/coupons"
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.stream, self.retries = stream, retries
        self.connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.connection is None:
            kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            self.connection = kind(self.host, self.port, timeout=TIMEOUT_S)
        return self.connection

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def upload(self, body: bytes, key: str) -> tuple[int, dict[str, Any]]:
        """(status, JSON answer) of one upload; connection failures, 503 and 409 in progress,
        and 429 are retried (the Idempotency-Key makes a retry safe)."""
        headers = {**self.headers, "Idempotency-Key": key}
        for attempt in range(self.retries + 1):
            wait = min(2.0**attempt, 30.0)
            try:
                connection = self._connect()
                connection.request("POST", self.path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                problem = f"{type(exc).__name__}: {exc}"
            else:
                document = _json(answer)
                if response.status not in (409, 429, 503) or attempt == self.retries:
                    return response.status, document
                problem = f"{response.status} {document.get('code', '')}"
                wait = _retry_after(response.getheader("Retry-After"), wait)
            if attempt == self.retries:
                raise UploadFailed(f"the service did not take an upload after {attempt + 1} tries: {problem}")
            self.stream.write(f"upload: {problem}; trying again in {wait:.0f}s\n")
            time.sleep(wait)
        raise AssertionError("unreachable")


def _json(answer: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return {"detail": answer[:200].decode(errors="replace")}
    return document if isinstance(document, dict) else {"detail": str(document)[:200]}


def _retry_after(header: str | None, default: float) -> float:
    try:
        return min(max(float(header or ""), 0.5), 60.0)
    except ValueError:
        return default


def validate(paths: list[Path], stream: TextIO) -> int | None:
    """The number of coupons in ``paths``; None (the problems on ``stream``) if any is invalid."""
    count, bad = 0, 0
    for path in paths:
        for item in read(path):
            if isinstance(item, BadItem):
                bad += 1
                if bad <= MAX_SHOWN_ERRORS:
                    stream.write(f"{item}\n")
            else:
                count += 1
    if bad:
        more = f" ({bad - MAX_SHOWN_ERRORS} more not shown)" if bad > MAX_SHOWN_ERRORS else ""
        stream.write(f"upload: {bad:,} invalid line(s){more}; nothing was sent\n")
        return None
    return count


def batches(paths: list[Path], size: int) -> Iterator[list[Item]]:
    """The items of ``paths`` in uploads of at most ``size`` (a file's last one may be short)."""
    for path in paths:
        batch: list[Item] = []
        for item in read(path, check=False):  # validated beforehand
            if isinstance(item, BadItem):  # the file changed since: a line no longer reads
                raise UploadFailed(f"{item} (the file changed during the upload?)")
            batch.append(item)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch


def idempotency_key(body: bytes, ordinal: int) -> str:
    """The same upload at the same place in a run gets the same key, whatever the run."""
    return f"upload-{ordinal}-" + hashlib.sha256(body).hexdigest()[:48]


def send(paths: list[Path], total: int, service: Service, args: argparse.Namespace) -> Totals:
    totals = Totals()
    progress = Progress(total, sys.stderr, args.progress_every, enabled=not args.quiet)
    for ordinal, batch in enumerate(batches(paths, args.batch)):
        body = b'{"coupons":[' + b",".join(item.body for item in batch) + b"]}"
        status, answer = service.upload(body, idempotency_key(body, ordinal))
        if status == 422 and answer.get("code") == "validation_error":
            raise UploadFailed(_refusal(batch, answer))
        if status != 201:
            detail = answer.get("detail") or answer
            hint = " (send smaller uploads: --batch)" if answer.get("code") == "body_too_large" else ""
            raise UploadFailed(f"the service answered {status} {answer.get('code', '')}: {detail}{hint}")
        duplicates = answer["duplicates"]
        totals.coupons += len(batch)
        totals.created += answer["created"]
        totals.duplicates += len(duplicates)
        if len(totals.shown_duplicates) < MAX_SHOWN_ERRORS and duplicates:
            where = {orjson.loads(item.body)["code"]: item for item in batch}
            for code in duplicates[: MAX_SHOWN_ERRORS - len(totals.shown_duplicates)]:
                item = where.get(code)
                totals.shown_duplicates.append(f"{item.path}:{item.line}: {code}" if item else code)
        progress.show(totals)
    progress.show(totals, last=True)
    return totals


def _refusal(batch: list[Item], answer: dict[str, Any]) -> str:
    """A 422 from the service, its item indexes turned into file and line."""
    lines = []
    for error in answer.get("errors", [])[:MAX_SHOWN_ERRORS]:
        index = error.get("index")
        where = f"{batch[index].path}:{batch[index].line}" if isinstance(index, int) else "(upload)"
        lines.append(f"{where}: {error.get('field')}: {error.get('message')}")
    return "the service refused an upload (earlier uploads are stored):\n  " + "\n  ".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coupon-pool upload",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Upload the coupons of CSV or JSON Lines files to a running service.",
        epilog=f"""\
files:
  *.jsonl, *.ndjson   one coupon per line, as an item of POST /v1/coupons
  anything else       CSV whose first row names the columns:
                      {", ".join(COLUMNS)}
                      (type and max_usages may be left out or empty: STANDARD and 1)

Every coupon is validated first; an invalid one stops the run before anything is sent.
Running the same command again after an interruption completes the upload and counts
nothing twice (each upload carries an Idempotency-Key derived from its content).

exit codes:
  {DONE}   every coupon is stored (created now, or already there: duplicates)
  {FAILED}   the service refused an upload or could not be reached (what it took is kept)
  {USAGE}   wrong arguments, or a file that cannot be opened
  {INVALID_DATA}  a coupon is invalid (listed by file, line and column); nothing was sent""",
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--url", default=service_url(),
                   help=f"the service (${URL_ENV}; default http://127.0.0.1:$PORT, PORT 8080)")  # fmt: skip
    p.add_argument("--api-key", default=os.environ.get(ADMIN_KEY_ENV),
                   help=f"an admin key, when the service has keys (${ADMIN_KEY_ENV})")  # fmt: skip
    p.add_argument("--batch", type=_batch_size, default=MAX_UPLOAD,
                   help=f"coupons per upload, 1-{MAX_UPLOAD:,} (default {MAX_UPLOAD:,})")  # fmt: skip
    p.add_argument("--retries", type=int, choices=range(11), default=5, metavar="0-10",
                   help="tries again after a failed connection, 503, 429 or 409 (default 5, "
                        "waiting 1, 2, 4, ... s or as Retry-After says)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="validate the files only; send nothing")
    p.add_argument("--progress-every", type=float, default=5.0,
                   help="seconds between progress lines off a terminal (default 5)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress; only the summary and problems")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def _batch_size(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_UPLOAD:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_UPLOAD:,}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for path in args.files:
        if not path.is_file():
            print(f"coupon-pool upload: {path}: not a readable file", file=sys.stderr)
            return USAGE
    started = time.monotonic()
    total = validate(args.files, sys.stderr)
    if total is None:
        return INVALID_DATA
    if args.dry_run:
        _summary(args, {"valid": total, "files": len(args.files)}, f"{total:,} valid coupons; nothing sent")
        return DONE
    try:
        service = Service(args.url, args.api_key, sys.stderr, args.retries)
    except ValueError as exc:
        print(f"coupon-pool upload: {exc}", file=sys.stderr)
        return USAGE
    try:
        totals = send(args.files, total, service, args)
    except UploadFailed as exc:
        print(
            f"coupon-pool upload: {exc}\nRun the same command again to complete the upload.", file=sys.stderr
        )
        return FAILED
    finally:
        service.close()
    seconds = time.monotonic() - started
    for line in totals.shown_duplicates:
        print(f"duplicate: {line}", file=sys.stderr)
    summary = {"coupons": totals.coupons, "created": totals.created, "duplicates": totals.duplicates,
               "files": len(args.files), "seconds": round(seconds, 3)}  # fmt: skip
    text = (f"{totals.coupons:,} coupons from {len(args.files)} file(s): {totals.created:,} created, "
            f"{totals.duplicates:,} duplicates (already stored), in {seconds:.1f}s")  # fmt: skip
    _summary(args, summary, text)
    return DONE


def _summary(args: argparse.Namespace, summary: dict[str, Any], text: str) -> None:
    print(orjson.dumps(summary).decode() if args.json else text)
