"""Function calls packed as RESP: the bytes redis-py itself would send, whatever the values."""

from __future__ import annotations

from typing import Any

import pytest
from redis.connection import PythonRespSerializer

from coupon_pool.pool.protocol import pack

VALUES: list[Any] = ["{cp}:available:FREE", "", "é-ü-✓", b"\x00\xff raw", 0, -17, 2**70, 1.5, 0.1, 1e20, True]


def redis_py_packs(function: bytes, keys: list[Any], args: list[Any]) -> bytes:
    serializer = PythonRespSerializer(buffer_cutoff=10**9, encode=_encode)
    return b"".join(serializer.pack("FCALL", function, len(keys), *keys, *args))


def _encode(value: Any) -> bytes:
    """As the service means its values: str() of anything that is not bytes, UTF-8."""
    return value if isinstance(value, bytes) else str(value).encode()


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_each_kind_of_value_is_packed_as_redis_py_packs_it(value: Any) -> None:
    call = (b"allocate_0123", ["{cp}:guard", value], [value, "user-1"], False, None)
    assert pack([call]) == redis_py_packs(b"allocate_0123", ["{cp}:guard", value], [value, "user-1"])


def test_calls_are_packed_one_after_another_a_bool_among_them() -> None:
    calls = [
        (b"redeem_1", ["{cp}:guard", "{cp}:c:A"], ["A", 3], False, None),
        (b"allocate_2", ["{cp}:guard"], [True, "u"], False, None),  # hiredis refuses a bool
        (b"stats_3", ["{cp}:guard"], [], False, None),
    ]
    expected = b"".join(redis_py_packs(f, list(k), list(a)) for f, k, a, *_ in calls)
    assert pack(calls) == expected
    assert b"$4\r\nTrue\r\n" in expected
