"""The ``coupon-pool`` command."""

from __future__ import annotations

import argparse
import resource
import sys

import uvicorn

from .server import ConnectionLimits, protocol
from .settings import settings_for

SPARE_DESCRIPTORS = 256  # beside the connections: Redis pools, the upload worker, files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coupon-pool", description="A Redis-native coupon pool service.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service (configured by environment variables)")
    serve.add_argument("--host", help="overrides HOST")
    serve.add_argument("--port", type=int, help="overrides PORT")
    serve.add_argument("--workers", type=int, help="overrides WORKERS")
    commands.add_parser("bench", help="load-test a running service (see: coupon-pool bench --help)")
    commands.add_parser("check", help="check the pool in Redis against its rules (exit 1 on a violation)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from .bench.cli import main as bench  # the bench's own modules load only when asked for

        return bench(argv[1:])
    if argv[:1] == ["check"]:
        from .check import main as check

        return check(argv[1:])
    args = parser.parse_args(argv)

    settings = settings_for("coupon-pool")
    if settings is None:
        return 2
    if not enough_file_descriptors(settings.max_connections):
        return 2
    limits = ConnectionLimits(
        keep_alive_s=settings.keep_alive_s,
        header_timeout_s=settings.header_timeout_s,
        max_header_bytes=settings.max_header_bytes,
        max_connections=settings.max_connections,
    )
    uvicorn.run(
        "coupon_pool.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers or settings.workers,
        log_level=settings.log_level,
        access_log=False,  # the app writes its own JSON access line per request
        http=protocol(limits),
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        # After SIGTERM, requests still running get this long, then are cancelled: a
        # stuck request never keeps a deployment from stopping.
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_s)),
    )
    return 0


def enough_file_descriptors(connections: int) -> bool:
    """Raise this process's descriptor limit to fit ``connections``, or say why it cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connections + SPARE_DESCRIPTORS
    if soft >= needed:
        return True
    if hard != resource.RLIM_INFINITY and hard < needed:
        print(f"coupon-pool: MAX_CONNECTIONS={connections} needs {needed} file descriptors, but this "
              f"process may open at most {hard} (ulimit -Hn): lower MAX_CONNECTIONS",
              file=sys.stderr)  # fmt: skip
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return True
