"""The wire: function calls packed as FCALL commands in RESP, and the replies that say a call
did not run."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from hiredis import pack_command
from redis.exceptions import AskError, ClusterDownError, ReadOnlyError, ResponseError, TryAgainError

# function name, keys, args, whether it is safe to run twice (keyed), and where its reply goes
Call = tuple[bytes, Sequence[str | bytes], Sequence[Any], bool, "asyncio.Future[Any]"]
# Replies that say the cluster did not run the call (MovedError is an AskError).
NOT_RUN = (AskError, TryAgainError, ClusterDownError, ReadOnlyError)
FUNCTION_NOT_FOUND = "Function not found"  # a Redis without the library: the call did not run


def not_found(result: Any) -> bool:
    return isinstance(result, ResponseError) and str(result).startswith(FUNCTION_NOT_FOUND)


def pack(calls: Sequence[Call]) -> bytes:
    """The calls as FCALL commands in the Redis protocol (RESP), ready to write.

    hiredis packs a command in C (str, bytes, int and float, as str() writes them): about
    3 us for an allocation's 16 arguments, where Python's formatting took 8 and redis-py's
    own packing 26. A call carrying anything else is packed in Python, alone.
    """
    out: list[bytes] = []
    for function, keys, args, *_ in calls:
        command = (b"FCALL", function, len(keys), *keys, *args)
        try:
            out.append(pack_command(command))
        except TypeError:  # a type hiredis does not take (a bool): as str() writes it
            out.append(_pack_python(command))
    return b"".join(out)


def _pack_python(command: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(command)]
    for item in command:
        value = item if isinstance(item, bytes) else str(item).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    return b"".join(out)
