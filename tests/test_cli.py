"""coupon-pool serve: the connection cap against the process's file-descriptor limits."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from coupon_pool import cli
from coupon_pool.cli import SPARE_DESCRIPTORS, descriptor_plan
from coupon_pool.http.server import ConnectionLimits
from coupon_pool.settings import Settings


def test_the_soft_limit_is_raised_to_fit_the_cap() -> None:
    assert descriptor_plan(500, True, soft=300, hard=20_000) == (500, 500 + SPARE_DESCRIPTORS, "")


def test_past_the_hard_limit_a_chosen_cap_refuses_the_start() -> None:
    cap, _, message = descriptor_plan(4096, True, soft=1000, hard=1000)
    assert cap is None
    assert "lower MAX_CONNECTIONS" in message


def test_past_the_hard_limit_the_default_cap_is_lowered_with_a_warning() -> None:
    cap, descriptors, message = descriptor_plan(4096, False, soft=1000, hard=1000)
    assert (cap, descriptors) == (1000 - SPARE_DESCRIPTORS, 1000)
    assert message.startswith("warning")


def test_a_signal_as_serve_begins_to_stop_cannot_skip_the_delivery_process_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvicorn returned (here: could not start); SIGTERM comes as serve swaps its handlers, with
    another thread alive (serve's watcher: a signal to the process may reach it first)."""
    stops: list[bool] = []
    running = threading.Event()

    class Delivery:
        def __init__(self, settings: Settings) -> None:
            pass

        def start(self) -> None:
            threading.Thread(target=running.wait, daemon=True).start()

        def stop(self) -> None:
            stops.append(True)
            running.set()

    def uvicorn_fails(settings: Settings, limits: ConnectionLimits) -> None:
        raise SystemExit(3)

    real_signal, sent = signal.signal, []

    def signal_then(number: int, handler: Callable[[int, Any], None]) -> Any:
        if not sent and getattr(handler, "__name__", "") == "later":  # the stop's swap begins
            sent.append(number)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
        return real_signal(number, handler)

    saved = {number: signal.getsignal(number) for number in cli.STOPPING}
    monkeypatch.setattr(cli, "DeliveryProcess", Delivery)
    monkeypatch.setattr(cli, "run_uvicorn", uvicorn_fails)
    monkeypatch.setattr(signal, "signal", signal_then)
    try:
        with pytest.raises(SystemExit):
            cli.serve_with_delivery(Settings(), ConnectionLimits())
    finally:
        for number, handler in saved.items():
            real_signal(number, handler)
        running.set()
    assert len(sent) == 1
    assert stops == [True]
