"""Raw-socket HTTP for the tests that must send what no HTTP client would."""

from __future__ import annotations

import socket


def read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    """An HTTP response's head from a raw socket (without its blank line), and what came
    after it in the same reads."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        more = conn.recv(65536)
        if not more:
            raise AssertionError(f"the connection closed before a whole head: {answer!r}")
        answer += more
    head, _, rest = answer.partition(b"\r\n\r\n")
    return head, rest


def read_answer(conn: socket.socket) -> bytes:
    """One whole HTTP response from a raw socket: its head, then Content-Length bytes."""
    head, body = read_head(conn)
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:]
    )
    while len(body) < length:
        more = conn.recv(65536)
        if not more:
            break
        body += more
    return head + b"\r\n\r\n" + body
