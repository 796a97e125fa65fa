"""The ``coupon-pool`` command."""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys

import uvicorn

from .http.delivery import DeliveryProcess
from .http.server import ConnectionLimits, protocol
from .settings import Settings
from .tools.common import settings_for

SPARE_DESCRIPTORS = 256  # beside the connections: Redis pools, the upload worker, files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coupon-pool", description="A Redis-native coupon pool service.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service (configured by environment variables)")
    serve.add_argument("--host", help="overrides HOST (checked alike)")
    serve.add_argument("--port", type=int, help="overrides PORT (checked alike)")
    serve.add_argument("--workers", type=int, help="overrides WORKERS (checked alike)")
    commands.add_parser(
        "config",
        help="check the settings in the environment and print them (secrets hidden); exit 2 if refused",
    )
    commands.add_parser("bench", help="load-test a running service (see: coupon-pool bench --help)")
    commands.add_parser("check", help="check the pool in Redis against its rules (exit 1 on a violation)")
    commands.add_parser("upload", help="upload the coupons of CSV or JSON Lines files (see: upload --help)")
    commands.add_parser("inspect", help="show one coupon from Redis: dates decoded, holders by page")
    commands.add_parser(
        "export", help="write a batch's coupons to a CSV or JSON Lines file (see: export --help)"
    )
    commands.add_parser(
        "events", help="write the audit trail as JSON Lines through a consumer group (see: events --help)"
    )
    commands.add_parser(
        "webhooks", help="the webhook endpoint's parked batches and backlog (see: webhooks --help)"
    )
    argv = sys.argv[1:] if argv is None else argv
    # Each of these commands has its own options; its modules load only when asked for.
    if argv[:1] == ["bench"]:
        from .tools.bench.cli import main as bench

        return bench(argv[1:])
    if argv[:1] == ["check"]:
        from .tools.check import main as check

        return check(argv[1:])
    if argv[:1] == ["upload"]:
        from .tools.upload import main as upload

        return upload(argv[1:])
    if argv[:1] == ["export"]:
        from .tools.export import main as export

        return export(argv[1:])
    if argv[:1] == ["events"]:
        from .tools.events import main as events

        return events(argv[1:])
    if argv[:1] == ["webhooks"]:
        from .tools.webhooks import main as webhooks

        return webhooks(argv[1:])
    if argv[:1] == ["inspect"]:
        from .tools.inspect import main as inspect

        return inspect(argv[1:])
    args = parser.parse_args(argv)

    options = {name: getattr(args, name, None) for name in ("host", "port", "workers")}
    settings = settings_for("coupon-pool", **{name: v for name, v in options.items() if v is not None})
    if settings is None:
        return 2
    if args.command == "config":
        print("\n".join(settings.described()))
        return 0
    connections = connections_that_fit(settings.max_connections, explicit="MAX_CONNECTIONS" in os.environ)
    if connections is None:
        return 2
    limits = ConnectionLimits(
        keep_alive_s=settings.keep_alive_s,
        header_timeout_s=settings.header_timeout_s,
        max_header_bytes=settings.max_header_bytes,
        max_connections=connections,
    )
    if not settings.hooks:
        run_uvicorn(settings, limits)
        return 0
    return serve_with_delivery(settings, limits)


def serve_with_delivery(settings: Settings, limits: ConnectionLimits) -> int:
    """uvicorn with webhooks: their delivery process beside the request workers
    (http/delivery.py), started first and stopped once uvicorn has.

    While uvicorn runs, its handlers take SIGINT and SIGTERM; these take one that comes before
    it starts, or the one it raises again on its way out (so that the process ends by it), and
    unwind to stop the delivery process first."""
    caught: list[int] = []

    def later(number: int, frame: object) -> None:
        caught.append(number)

    def stopped(number: int, frame: object) -> None:
        later(number, frame)
        for again in STOPPING:  # a second one waits for the stop below
            signal.signal(again, later)
        raise Signalled

    delivery = DeliveryProcess(settings)
    try:
        for handled in STOPPING:
            signal.signal(handled, stopped)
        delivery.start()
        run_uvicorn(settings, limits)
    except Signalled:
        pass
    finally:
        while True:  # a signal may come as the handlers are swapped: it must not unwind the stop
            try:
                for again in STOPPING:
                    signal.signal(again, later)
                break
            except Signalled:
                continue
        delivery.stop()
    for number in caught[:1]:  # ended as without webhooks: by SIGTERM; after SIGINT, 0 (uvicorn.run's)
        if number == signal.SIGTERM:
            signal.signal(number, signal.SIG_DFL)
            signal.raise_signal(number)
    return 0


STOPPING = (signal.SIGINT, signal.SIGTERM)


class Signalled(Exception):
    """SIGINT or SIGTERM came while uvicorn was not handling it (``main``)."""


def run_uvicorn(settings: Settings, limits: ConnectionLimits) -> None:
    uvicorn.run(
        "coupon_pool.http.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,  # the app writes its own JSON access line per request
        http=protocol(limits),
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        # After SIGTERM, requests still running get this long, then are cancelled: a
        # stuck request never keeps a deployment from stopping.
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_s)),
    )


def connections_that_fit(connections: int, *, explicit: bool) -> int | None:
    """The connection cap this process can keep, its descriptor limit raised to fit;
    None (the reason on stderr) when it cannot start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap, descriptors, message = descriptor_plan(connections, explicit, soft, hard)
    if message:
        print(f"coupon-pool: {message}", file=sys.stderr)
    if cap is not None and descriptors > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors, hard))
    return cap


def descriptor_plan(connections: int, explicit: bool, soft: int, hard: int) -> tuple[int | None, int, str]:
    """(connection cap or None, descriptors to allow, message) for the limits soft and hard.

    Past the hard limit (``ulimit -Hn``) a MAX_CONNECTIONS the operator set refuses the
    start; the default is lowered to fit, with a warning.
    """
    needed = connections + SPARE_DESCRIPTORS
    if soft >= needed or hard == resource.RLIM_INFINITY or hard >= needed:
        return connections, needed, ""
    fits = hard - SPARE_DESCRIPTORS
    if explicit or fits < 1:
        refusal = (f"MAX_CONNECTIONS={connections} needs {needed} file descriptors, but this process "
                   f"may open at most {hard} (ulimit -Hn): lower MAX_CONNECTIONS")  # fmt: skip
        return None, soft, refusal
    warning = (f"warning: this process may open at most {hard} file descriptors (ulimit -Hn), so it "
               f"serves at most {fits} connections, not the default {connections}; set MAX_CONNECTIONS "
               "to choose")  # fmt: skip
    return fits, hard, warning
