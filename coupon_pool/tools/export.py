"""``coupon-pool export --batch B FILE``: a batch's coupons into a file `coupon-pool upload` loads back.

The service streams the export (GET /v1/batches/{batch}/coupons); it is written as it comes
to FILE.part beside FILE, which takes FILE's name only once the answer is complete: a run
cut short leaves no partial FILE, and running it again starts over.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, TextIO, get_args

import orjson

from ..models import ExportFormat
from .common import ADMIN_KEY_ENV, URL_ENV, ProgressLine, ServiceUrl, batch_id, progress_every, service_url
from .upload_http import document_of

DONE, FAILED, USAGE = 0, 1, 2  # exit codes, as README lists them
TIMEOUT_S = 120.0  # between two reads of the answer; a stretch takes milliseconds
READ_BYTES = 1 << 16
SUFFIXES: dict[str, ExportFormat] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


class ExportFailed(Exception):
    """The service refused the export, could not be reached, or the answer was cut short."""


class Progress:
    """Coupons written: a bar redrawn in place on a terminal; else a line every ``every_s``."""

    def __init__(self, total: int | None, stream: TextIO, every_s: float, enabled: bool) -> None:
        self.total, self.every_s, self.enabled = total, every_s, enabled
        self.line = ProgressLine(stream)
        self.started = time.monotonic()
        self.shown_at = 0.0
        self.open = False

    def show(self, coupons: int, *, last: bool = False) -> None:
        now = time.monotonic()
        terminal = self.line.terminal
        if not self.enabled or (not last and now - self.shown_at < (0.1 if terminal else self.every_s)):
            return
        self.shown_at = now
        rate = coupons / max(now - self.started, 1e-9)
        of = f"/~{self.total:,}" if self.total is not None else ""
        figures = f"{coupons:,}{of} coupons written, {rate:,.0f}/s"
        if terminal:
            done = min(coupons / self.total, 1.0) if self.total else 0.0
            self.line.tick(f"[{'#' * round(24 * done):<24}] {figures}")
            self.open = True
        else:
            self.line.tick(f"export: {figures}")

    def end(self) -> None:
        if self.open:
            self.line.end()
            self.open = False


class Export:
    """One export's calls to the service, on one connection."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.service = ServiceUrl.at(args.url)
        self.batch_path = f"{self.service.prefix}/v1/batches/{urllib.parse.quote(args.batch, safe='')}"
        self.headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        self.connection = self.service.connection(TIMEOUT_S)

    def close(self) -> None:
        self.connection.close()

    def expected(self) -> int:
        """About how many coupons the batch holds (created, less those purged): the bar's end."""
        batch = self._get(self.batch_path)
        return int(batch["created"]) - int(batch["purged"])

    def _get(self, path: str) -> dict[str, Any]:
        response = self._request(path)
        return document_of(response.read())

    def _request(self, path: str) -> http.client.HTTPResponse:
        try:
            self.connection.request("GET", path, headers=self.headers)
            response = self.connection.getresponse()
        except OSError as exc:
            raise ExportFailed(f"cannot reach the service: {type(exc).__name__}: {exc}") from None
        if response.status != 200:
            problem = document_of(response.read())
            detail = problem.get("detail", problem)
            raise ExportFailed(f"the service answered {response.status} {problem.get('code', '')}: {detail}")
        return response

    def write(self, path: Path, fmt: ExportFormat, expired: bool, progress: Progress) -> tuple[int, int]:
        """The export written to ``path`` as it comes; (coupons, bytes). ExportFailed, or
        OSError for the file."""
        query = f"?format={fmt}" + ("&expired=true" if expired else "")
        response = self._request(f"{self.batch_path}/coupons{query}")
        lines = size = 0
        with path.open("wb") as out:
            try:
                while chunk := response.read(READ_BYTES):
                    out.write(chunk)
                    size += len(chunk)
                    lines += chunk.count(b"\n")  # a coupon a line: JSON and CSV cells escape line breaks
                    progress.show(lines - (fmt == "csv"))
            except (OSError, ValueError) as exc:  # http.client.IncompleteRead is a ValueError
                raise ExportFailed(f"the answer was cut short after {size:,} bytes: {exc}") from None
        coupons = lines - (fmt == "csv")  # the header row
        progress.show(coupons, last=True)
        return coupons, size


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coupon-pool export",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a batch's coupons, with their counts and state, to a file.",
        epilog=f"""\
The file's format is --format, else its name's: *.jsonl or *.ndjson (JSON Lines), *.csv.
Each line is a coupon as `coupon-pool upload` reads it, then its state: allocated, used,
disabled, created_at (which upload reads past). Coupons past their expiry are left out
unless --expired, and a file holding them does not load back (upload takes coupons still
to expire). The file is written as FILE.part, renamed FILE once complete.

exit codes:
  {DONE}   the file is written whole
  {FAILED}   the service refused the export (no such batch, say), could not be reached, or
      the answer was cut short (no FILE is left: run the same command again)
  {USAGE}   wrong arguments, or a file that cannot be written""",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--batch", required=True, type=batch_id, help="the batch's id")
    p.add_argument("--format", choices=get_args(ExportFormat),
                   help="jsonl or csv (default: from FILE's name)")  # fmt: skip
    p.add_argument("--expired", action="store_true", help="coupons past their expiry too")
    p.add_argument("--url", default=service_url(),
                   help=f"the service (${URL_ENV}; default http://127.0.0.1:$PORT, PORT 8080)")  # fmt: skip
    p.add_argument("--api-key", default=os.environ.get(ADMIN_KEY_ENV),
                   help=f"an admin key, when the service has keys (${ADMIN_KEY_ENV})")  # fmt: skip
    p.add_argument("--progress-every", type=progress_every, default=5.0,
                   help="seconds between progress lines off a terminal (default 5)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress; only the summary and problems")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    fmt = args.format or SUFFIXES.get(args.file.suffix.lower())
    if fmt is None:
        print(f"coupon-pool export: {args.file}: name it *.jsonl or *.csv, or give --format", file=sys.stderr)
        return USAGE
    part = args.file.with_name(args.file.name + ".part")
    started = time.monotonic()
    try:
        export = Export(args)
    except ValueError as exc:
        print(f"coupon-pool export: {exc}", file=sys.stderr)
        return USAGE
    progress = Progress(None, sys.stderr, args.progress_every, enabled=not args.quiet)
    try:
        progress.total = export.expected()
        coupons, size = export.write(part, fmt, args.expired, progress)
        os.replace(part, args.file)
    except ExportFailed as exc:
        progress.end()
        print(f"coupon-pool export: {exc}", file=sys.stderr)
        return FAILED
    except OSError as exc:
        progress.end()
        print(f"coupon-pool export: {args.file}: cannot be written: {exc.strerror or exc}", file=sys.stderr)
        return USAGE
    finally:
        export.close()
        part.unlink(missing_ok=True)
    progress.end()
    seconds = time.monotonic() - started
    summary = {"batch": args.batch, "coupons": coupons, "file": str(args.file), "format": fmt,
               "bytes": size, "seconds": round(seconds, 3)}  # fmt: skip
    text = (
        f"{coupons:,} coupons of batch {args.batch} written to {args.file} ({size:,} bytes) in {seconds:.1f}s"
    )
    print(orjson.dumps(summary).decode() if args.json else text)
    return DONE
