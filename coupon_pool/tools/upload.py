"""``coupon-pool upload FILE...``: coupons from CSV or JSON Lines files, any number of them.

Each file is read twice: once to validate every coupon with the service's own rules (so a
bad line 190,000 stops the upload before anything is sent), then to send the coupons in
uploads of at most --batch. Every upload names one batch (--batch-id, or by default one
named after the coupons' content), and carries an Idempotency-Key derived from its bytes
and its position in the run, so running the same command again after an interruption
stores what is missing, in the same batch, and counts nothing twice. The files are read by coupon_files.py,
the service is called by upload_http.py.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from ..models import MAX_UPLOAD
from ..results import EXPORT_STATE_COLUMNS
from .common import ADMIN_KEY_ENV, URL_ENV, ProgressLine, batch_id, progress_every, service_url
from .coupon_files import COLUMNS, BadItem, Item, Unreadable, read
from .upload_http import Answer, Service, UploadFailed

# Exit codes, as README lists them.
DONE, FAILED, USAGE, INVALID_DATA = 0, 1, 2, 65
MAX_SHOWN_ERRORS = 20


@dataclass
class Totals:
    """What the service answered, replays included; and how much of it was replayed."""

    coupons: int = 0
    created: int = 0
    duplicates: int = 0
    shown_duplicates: list[str] = field(default_factory=list)
    uploads: int = 0
    replayed: int = 0  # uploads answered with the answer of an earlier run (same content, same place)
    replayed_created: int = 0  # what those earlier runs created


class Progress:
    """A bar redrawn in place on a terminal; else a plain line every ``every_s`` seconds."""

    def __init__(self, total: int, stream: TextIO, every_s: float, enabled: bool) -> None:
        self.total, self.every_s, self.enabled = total, every_s, enabled
        self.stream = stream
        self.line = ProgressLine(stream)
        self.terminal = self.line.terminal
        self.started = time.monotonic()
        self.shown_at = 0.0
        self.shown = -1  # coupons sent, as last shown
        self.open = False  # a bar is drawn on a terminal line not ended yet

    def show(self, totals: Totals, *, last: bool = False) -> None:
        """The figures, at most every ``every_s`` (0.1 s on a terminal); ``last``: now."""
        if not self.enabled or totals.coupons == self.shown:
            return
        now = time.monotonic()
        if not last and now - self.shown_at < (0.1 if self.terminal else self.every_s):
            return
        self.shown_at, self.shown = now, totals.coupons
        elapsed = max(now - self.started, 1e-9)
        rate = totals.coupons / elapsed
        left = (self.total - totals.coupons) / rate if rate else float("inf")
        replayed = f", {totals.replayed:,} upload(s) replayed" if totals.replayed else ""
        figures = (f"{totals.coupons:,}/{self.total:,} coupons sent, {totals.created:,} created, "
                   f"{totals.duplicates:,} duplicates{replayed}, {rate:,.0f}/s, "
                   f"{_duration(left)} left")  # fmt: skip
        if self.terminal:
            done = totals.coupons / self.total if self.total else 1.0
            self.line.tick(f"[{'#' * round(24 * done):<24}] {figures}")
            self.open = True
        else:
            self.line.tick(f"upload: {figures}")

    def note(self, message: str) -> None:
        """A line of its own between two draws of the bar (which then starts a new line)."""
        self.end()
        self.stream.write(f"upload: {message}\n")
        self.stream.flush()

    def end(self) -> None:
        """End the bar's line, so what follows (the summary, a problem) starts on a line of its own."""
        if self.open:
            self.line.end()
            self.open = False


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def validate(paths: list[Path], stream: TextIO) -> tuple[int, str] | None:
    """The number of coupons in ``paths`` and a batch id named after them (the same coupons,
    the same id); None (the problems on ``stream``) if any is invalid."""
    count, bad = 0, 0
    digest = hashlib.sha256()
    for path in paths:
        for item in read(path):
            if isinstance(item, BadItem):
                bad += 1
                if bad <= MAX_SHOWN_ERRORS:
                    stream.write(f"{item}\n")
            else:
                count += 1
                digest.update(item.body)
    if bad:
        more = f" ({bad - MAX_SHOWN_ERRORS} more not shown)" if bad > MAX_SHOWN_ERRORS else ""
        stream.write(f"upload: {bad:,} invalid line(s){more}; nothing was sent\n")
        return None
    return count, "f-" + digest.hexdigest()[:24]


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


def send(
    paths: list[Path], service: Service, args: argparse.Namespace, totals: Totals, progress: Progress
) -> None:
    """Upload the coupons of ``paths``, counting what the service answers in ``totals``."""
    try:
        named = orjson.dumps(args.batch_id)
        for ordinal, batch in enumerate(batches(paths, args.batch)):
            body = b'{"coupons":[' + b",".join(item.body for item in batch) + b'],"batch":' + named + b"}"
            _count(service.upload(body, idempotency_key(body, ordinal)), batch, totals)
            progress.show(totals)
        progress.show(totals, last=True)
    finally:
        progress.end()  # before what follows: the summary, or a problem


def _count(reply: Answer, batch: list[Item], totals: Totals) -> None:
    """One upload's answer, counted in ``totals``; UploadFailed if the service refused it."""
    status, answer = reply.status, reply.document
    if status == 422 and answer.get("code") == "validation_error":
        raise UploadFailed(_refusal(batch, answer))
    if status != 201:
        detail = answer.get("detail") or answer
        hint = " (send smaller uploads: --batch)" if answer.get("code") == "body_too_large" else ""
        raise UploadFailed(f"the service answered {status} {answer.get('code', '')}: {detail}{hint}")
    duplicates = answer["duplicates"]
    totals.uploads += 1
    if reply.replayed:
        totals.replayed += 1
        totals.replayed_created += answer["created"]
    totals.coupons += len(batch)
    totals.created += answer["created"]
    totals.duplicates += len(duplicates)
    if len(totals.shown_duplicates) < MAX_SHOWN_ERRORS and duplicates:
        where = {orjson.loads(item.body)["code"]: item for item in batch}
        for code in duplicates[: MAX_SHOWN_ERRORS - len(totals.shown_duplicates)]:
            item = where.get(code)
            totals.shown_duplicates.append(f"{item.path}:{item.line}: {code}" if item else code)


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
                      (type and max_usages may be left out or empty: STANDARD and 1;
                      starts_at and metadata too: none. metadata is a JSON object, such
                      as "{{""campaign"": ""spring""}}" with its quotes doubled)
                      and the state `coupon-pool export` writes beside them, which is
                      read past: {", ".join(EXPORT_STATE_COLUMNS)} (a JSON line's fields too)

Every coupon is validated first; an invalid one stops the run before anything is sent.
Running the same command again after an interruption completes the upload and counts
nothing twice (each upload carries an Idempotency-Key derived from its content).

exit codes:
  {DONE}   every coupon is stored (created now, or already there: duplicates)
  {FAILED}   the service refused an upload or could not be reached (what it took is kept)
  {USAGE}   wrong arguments, or a file that cannot be read
  {INVALID_DATA}  a coupon is invalid (listed by file, line and column); nothing was sent""",
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--url", default=service_url(),
                   help=f"the service (${URL_ENV}; default http://127.0.0.1:$PORT, PORT 8080)")  # fmt: skip
    p.add_argument("--api-key", default=os.environ.get(ADMIN_KEY_ENV),
                   help=f"an admin key, when the service has keys (${ADMIN_KEY_ENV})")  # fmt: skip
    p.add_argument("--batch", type=_batch_size, default=MAX_UPLOAD,
                   help=f"coupons per upload, 1-{MAX_UPLOAD:,} (default {MAX_UPLOAD:,})")  # fmt: skip
    p.add_argument("--batch-id", type=batch_id, default=None, metavar="NAME",
                   help="the batch the coupons join, 1-64 of A-Z a-z 0-9 _ . - (default: one named after "
                        "the coupons, f-<digest>: the same files join the same batch)")  # fmt: skip
    p.add_argument("--retries", type=int, choices=range(11), default=5, metavar="0-10",
                   help="tries again after a failed connection, 503, 429 or 409 (default 5, "
                        "waiting 1, 2, 4, ... s or as Retry-After says)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="validate the files only; send nothing")
    p.add_argument("--progress-every", type=progress_every, default=5.0,
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
    try:
        found = validate(args.files, sys.stderr)
    except Unreadable as exc:
        print(f"coupon-pool upload: {exc}; nothing was sent", file=sys.stderr)
        return USAGE
    if found is None:
        return INVALID_DATA
    total, named = found
    args.batch_id = args.batch_id or named
    if args.dry_run:
        _summary(args, {"valid": total, "files": len(args.files)}, f"{total:,} valid coupons; nothing sent")
        return DONE
    progress = Progress(total, sys.stderr, args.progress_every, enabled=not args.quiet)
    try:
        service = Service(args.url, args.api_key, progress.note, args.retries)
    except ValueError as exc:
        print(f"coupon-pool upload: {exc}", file=sys.stderr)
        return USAGE
    totals = Totals()
    try:
        send(args.files, service, args, totals, progress)
    except UploadFailed as exc:
        print(f"coupon-pool upload: {exc}\nRun the same command again to complete the upload "
              f"(batch {args.batch_id}).", file=sys.stderr)  # fmt: skip
        return FAILED
    except Unreadable as exc:  # validated, then gone (or no longer readable) before it was sent
        print(f"coupon-pool upload: {exc}; the {totals.coupons:,} coupons sent before it are stored: "
              "run the same command again once it can be read", file=sys.stderr)  # fmt: skip
        return USAGE
    finally:
        service.close()
    seconds = time.monotonic() - started
    for line in totals.shown_duplicates:
        print(f"duplicate: {line}", file=sys.stderr)
    created_now = totals.created - totals.replayed_created
    summary = {"coupons": totals.coupons, "created": totals.created, "duplicates": totals.duplicates,
               "files": len(args.files), "uploads": totals.uploads, "replayed": totals.replayed,
               "created_now": created_now, "seconds": round(seconds, 3), "batch": args.batch_id}  # fmt: skip
    text = (f"{totals.coupons:,} coupons from {len(args.files)} file(s): {totals.created:,} created, "
            f"{totals.duplicates:,} duplicates (already stored), in {seconds:.1f}s; "
            f"batch {args.batch_id}")  # fmt: skip
    if totals.replayed:
        text += (f"; {totals.replayed:,} of {totals.uploads:,} upload(s) had been sent before, by a run of "
                 "the same coupons: their figures are that run's, and this run created "
                 f"{created_now:,}")  # fmt: skip
    _summary(args, summary, text)
    return DONE


def _summary(args: argparse.Namespace, summary: dict[str, Any], text: str) -> None:
    print(orjson.dumps(summary).decode() if args.json else text)
