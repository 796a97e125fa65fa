"""Replies decoded: Redis milliseconds as datetimes, exactly, both ways."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from coupon_pool.pool.codec import from_ms, to_ms

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# From year 1 to year 9999, as datetime allows.
MS = st.integers(
    min_value=to_ms(datetime(1, 1, 1, tzinfo=UTC)), max_value=to_ms(datetime(9999, 12, 31, tzinfo=UTC))
)


@given(MS)
def test_milliseconds_become_the_datetime_they_name_and_back(ms: int) -> None:
    moment = from_ms(ms)
    assert moment == EPOCH + timedelta(milliseconds=ms)
    assert moment.tzinfo is UTC
    assert to_ms(moment) == ms
    assert from_ms(str(ms)) == moment  # as Redis answers: a string


def test_edges() -> None:
    assert from_ms(0) == EPOCH
    assert from_ms(-1) == datetime(1969, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)
    assert from_ms("1700000000123") == datetime(2023, 11, 14, 22, 13, 20, 123_000, tzinfo=UTC)
