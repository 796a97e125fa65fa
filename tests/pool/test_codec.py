"""Replies decoded: Redis milliseconds as datetimes, exactly, both ways; an audit entry as JSON."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from coupon_pool.pool.codec import audit_entry, audit_json, from_ms, to_ms

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


# An entry's fields as a stream holds them: text, some of it counts or rates, op anywhere.
FIELDS = st.dictionaries(
    st.sampled_from(
        ["op", "code", "user_id", "type", "used", "created", "purged_FREE", "rate_per_min", "error"]
    ),
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
)


@given(
    st.integers(min_value=0, max_value=to_ms(datetime(9999, 12, 31, tzinfo=UTC))), st.integers(0, 99), FIELDS
)
def test_an_entry_as_json_is_the_models_dump_key_for_key_in_order(
    ms: int, seq: int, fields: dict[str, str]
) -> None:
    entry = f"{ms}-{seq}"
    expected = audit_entry(f"{entry}-3", fields, entry).model_dump(mode="json")

    built = audit_json(f"{entry}-3", fields, entry)

    assert list(built.items()) == list(expected.items())
