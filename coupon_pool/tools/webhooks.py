"""``coupon-pool webhooks status|redeliver``: the webhook endpoint's parked batches and backlog.

Each serve's delivery process delivers the events (http/delivery.py); a batch the endpoint kept
refusing until WEBHOOK_RETRY_HORIZON_S is parked in Redis (pool/deliveries.py). ``status`` prints, as
JSON, the parked batches and what the endpoint's group has not acknowledged (Deliveries.status,
which GET /v1/webhooks answers too); ``redeliver`` POSTs each parked batch again, signed anew,
oldest first per stream, and removes it once answered 2xx. At the first refusal in a stream it
stops there, so a stream's batches still reach the endpoint in order.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson
from redis.exceptions import RedisError

from ..pool.deliveries import Deliveries, webhook_status
from ..pool.placement import LayoutMismatch
from ..pool.store import Store
from ..settings import Hook, Settings
from ..webhooks import Sender, body_of
from .common import operator_settings

DONE, FAILED, USAGE, REFUSED = 0, 1, 2, 3  # exit codes, as README lists them
PAGE = 100  # parked batches read at a time


async def redeliver(store: Store, settings: Settings, hook: Hook) -> int:
    deliveries = Deliveries(store.ctx, hook.name)
    sender = Sender(hook.url, hook.secret, settings.webhook_timeout_s, connections=1)
    delivered = kept = 0
    try:
        for n in range(store.feeds.streams):
            while batches := await deliveries.parked(n, 0, PAGE):
                refused = None
                for batch in batches:
                    outcome = await sender.post(body_of(batch.events))
                    if not outcome.ok:
                        refused = outcome.reason
                        break
                    await deliveries.unpark(batch)
                    delivered += 1
                if refused is not None:
                    left = (await deliveries.parked_counts())[n]
                    kept += left
                    print(
                        f"coupon-pool webhooks: {hook.name}: stream {n}: the endpoint refused a parked batch "
                        f"({refused}): it and the {left - 1} after it stay parked",
                        file=sys.stderr,
                    )
                    break
    finally:
        await sender.aclose()
    print(orjson.dumps({"endpoint": hook.name, "delivered": delivered, "kept": kept}).decode())
    return REFUSED if kept else DONE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="coupon-pool webhooks",
        description="The webhook endpoints (WEBHOOK_URL's, named default, and WEBHOOK_ENDPOINTS'): their "
        "parked batches and backlog (status, a JSON line per endpoint), or their parked batches POSTed "
        "again (redeliver). Exit 0 when done, 1 when Redis failed, 2 on bad options or settings (no "
        "endpoint), 3 when an endpoint refused a parked batch again (kept parked).",
    )
    parser.add_argument("action", choices=["status", "redeliver"])
    parser.add_argument("--endpoint", help="this endpoint only (its name; default: every endpoint)")
    args = parser.parse_args(argv)
    settings = operator_settings("coupon-pool webhooks")
    if settings is None:
        return USAGE
    hooks = [hook for hook in settings.hooks if args.endpoint in (None, hook.name)]
    if not settings.hooks:
        print(
            "coupon-pool webhooks: neither WEBHOOK_URL nor WEBHOOK_ENDPOINTS is set: no endpoint",
            file=sys.stderr,
        )
        return USAGE
    if not hooks:
        names = ", ".join(hook.name for hook in settings.hooks)
        print(f"coupon-pool webhooks: no endpoint {args.endpoint!r}; the endpoints: {names}", file=sys.stderr)
        return USAGE
    try:
        return asyncio.run(_main(settings, args.action, hooks))
    except (RedisError, LayoutMismatch) as exc:
        print(f"coupon-pool webhooks: {exc}", file=sys.stderr)
        return FAILED


async def _main(settings: Settings, action: str, hooks: list[Hook]) -> int:
    store = Store.from_settings(settings, max_connections=4)
    try:
        await store.prepare()
        if action == "status":
            for shown in await webhook_status(store.ctx, store.feeds, hooks):
                print(shown.model_dump_json())
            return DONE
        outcomes = [await redeliver(store, settings, hook) for hook in hooks]
        return REFUSED if REFUSED in outcomes else DONE
    finally:
        await store.aclose()
