"""The audit trail's cursor on a sharded pool: a position in every stream, encoded opaquely.

A sharded pool writes one audit stream per slot. A page read from them is merged by id, but
the streams are read one after another while writes go on, so one id cannot say where a page
ended: an entry written to a stream already read would sort before it and never be returned.
The cursor names each stream's own position instead (the last entry of that stream a page
returned), and the next page reads each stream after its own position: nothing is skipped.

Text form: ``c1.`` then base64url (no padding) of unsigned LEB128 varints: the least of the
positions' milliseconds, then per stream its milliseconds above that and its sequence.
"""

from __future__ import annotations

import base64
import binascii

PREFIX = "c1."
MAX_STREAMS = 257  # settings.MAX_POOL_SHARDS + the main slot
_MAX_PART = 2**64 - 1  # a stream id's parts, as Redis bounds them
_VARINT = 10  # bytes of the longest varint of a part
MAX_LENGTH = len(PREFIX) + (_VARINT * (1 + 2 * MAX_STREAMS) * 4 + 2) // 3
PATTERN = rf"^c1\.[A-Za-z0-9_-]{{2,{MAX_LENGTH - len(PREFIX)}}}$"

Position = tuple[int, int]  # (ms, seq) of a stream id


class CursorError(ValueError):
    """A cursor this service did not write."""


def encode(positions: list[Position]) -> str:
    base = min(ms for ms, _ in positions)
    out = bytearray(_varint(base))
    for ms, seq in positions:
        out += _varint(ms - base) + _varint(seq)
    return PREFIX + base64.urlsafe_b64encode(bytes(out)).rstrip(b"=").decode()


def decode(text: str) -> list[Position]:
    if not text.startswith(PREFIX) or len(text) > MAX_LENGTH:
        raise CursorError("not a cursor of this service")
    body = text[len(PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise CursorError("not a cursor of this service") from None
    values, at = [], 0
    while at < len(raw):
        value, at = _read_varint(raw, at)
        values.append(value)
    if len(values) < 3 or len(values) % 2 == 0:
        raise CursorError("not a cursor of this service")
    base, rest = values[0], values[1:]
    positions = [(base + rest[i], rest[i + 1]) for i in range(0, len(rest), 2)]
    # The greatest id has nothing after it: Redis refuses to read past it.
    if any(ms > _MAX_PART or (ms, seq) == (_MAX_PART, _MAX_PART) for ms, seq in positions):
        raise CursorError("not a cursor of this service")
    return positions


def from_entry_id(entry_id: str, streams: int) -> list[Position]:
    """The positions just before the entry ``<ms>-<seq>-<slot>`` is, in merge order: at it in
    its own stream and those before it, one id earlier in the streams after it (which sort
    after it with the same id)."""
    ms_seq, _, slot = entry_id.rpartition("-")
    ms, _, seq = ms_seq.partition("-")
    at, before = (int(ms), int(seq)), _previous(int(ms), int(seq))
    return [at if n <= int(slot) else before for n in range(streams)]


def stream_id(position: Position) -> str:
    return f"{position[0]}-{position[1]}"


def _previous(ms: int, seq: int) -> Position:
    if seq > 0:
        return ms, seq - 1
    return (ms - 1, _MAX_PART) if ms > 0 else (0, 0)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(raw: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    for n in range(_VARINT):
        if at + n >= len(raw):
            break
        byte = raw[at + n]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if value > _MAX_PART:
                break
            return value, at + n + 1
    raise CursorError("not a cursor of this service")
