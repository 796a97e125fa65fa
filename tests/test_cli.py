"""coupon-pool serve: the connection cap against the process's file-descriptor limits."""

from __future__ import annotations

from coupon_pool.cli import SPARE_DESCRIPTORS, descriptor_plan


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
