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

from ..http.delivery import ENDPOINT
from ..pool.deliveries import Deliveries
from ..pool.placement import LayoutMismatch
from ..pool.store import Store
from ..settings import Settings
from ..webhooks import Sender, body_of
from .common import operator_settings

DONE, FAILED, USAGE, REFUSED = 0, 1, 2, 3  # exit codes, as README lists them
PAGE = 100  # parked batches read at a time


async def redeliver(store: Store, settings: Settings) -> int:
    deliveries = Deliveries(store.ctx, ENDPOINT)
    sender = Sender(settings.webhook_url, settings.webhook_secret, settings.webhook_timeout_s, connections=1)
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
                        f"coupon-pool webhooks: stream {n}: the endpoint refused a parked batch ({refused}): "
                        f"it and the {left - 1} after it stay parked",
                        file=sys.stderr,
                    )
                    break
    finally:
        await sender.aclose()
    print(orjson.dumps({"delivered": delivered, "kept": kept}).decode())
    return REFUSED if kept else DONE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="coupon-pool webhooks",
        description="The webhook endpoint of WEBHOOK_URL: its parked batches and backlog (status), or its "
        "parked batches POSTed again (redeliver). Exit 0 when done, 1 when Redis failed, 2 on bad options "
        "or settings (WEBHOOK_URL unset), 3 when the endpoint refused a parked batch again (kept parked).",
    )
    parser.add_argument("action", choices=["status", "redeliver"])
    args = parser.parse_args(argv)
    settings = operator_settings("coupon-pool webhooks")
    if settings is None:
        return USAGE
    if not settings.webhook_url:
        print("coupon-pool webhooks: WEBHOOK_URL is not set: there is no endpoint", file=sys.stderr)
        return USAGE
    try:
        return asyncio.run(_main(settings, args.action))
    except (RedisError, LayoutMismatch) as exc:
        print(f"coupon-pool webhooks: {exc}", file=sys.stderr)
        return FAILED


async def _main(settings: Settings, action: str) -> int:
    store = Store.from_settings(settings, max_connections=4)
    try:
        await store.prepare()
        if action == "status":
            shown = await Deliveries(store.ctx, ENDPOINT).status(store.feeds, settings.webhook_url)
            print(shown.model_dump_json())
            return DONE
        return await redeliver(store, settings)
    finally:
        await store.aclose()
