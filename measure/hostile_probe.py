"""The longest event-loop stall hostile inputs cause: a probe's latency while they arrive.

    python measure/hostile_probe.py URL [ADMIN_KEY]

A probe thread asks URL/healthz in a loop on one keep-alive connection and records each
answer's latency; meanwhile each hostile input below is sent five times, one after
another, on connections of their own. Prints, per input, the answers it got and the
probe's longest wait while it ran, then the probe's idle figure for comparison.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable

import orjson

URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
KEY = sys.argv[2] if len(sys.argv) > 2 else None
HOST, PORT = URL.split("//")[1].split(":")[0], int(URL.rsplit(":", 1)[1])
AUTH = f"Authorization: Bearer {KEY}\r\n" if KEY else ""


def post(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\n{AUTH}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip


def coupon(code: str) -> dict[str, object]:
    return {"code": code, "discount": {"kind": "flat", "value": "1"}, "expires_at": "2099-01-01T00:00:00Z"}


HOSTILE: dict[str, Callable[[], bytes]] = {
    "8,000 query parameters": lambda: (
        f"GET /v1/audit?{'&'.join(f'p{i}=' for i in range(8000))} HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n".encode()
    ),
    "64 KiB header": lambda: b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n",
    "5,000 headers": lambda: b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-A: b\r\n" * 5000 + b"\r\n",
    "60 KiB body of repeated fields": lambda: post(
        "/v1/allocations", b"{" + b'"user_id":"a",' * 4300 + b'"type":"FREE"}'
    ),
    "body nested 10,000 deep": lambda: post("/v1/allocations", b"[" * 10000 + b"]" * 10000),
    "number of 60,000 digits": lambda: post("/v1/allocations", b'{"user_id":' + b"9" * 60000 + b"}"),
    "1,000 invalid coupons (inline)": lambda: post(
        "/v1/coupons", orjson.dumps({"coupons": [{"code": "bad code!"}] * 1000})
    ),
    "50,000-coupon upload": lambda: post(
        "/v1/coupons", orjson.dumps({"coupons": [coupon(f"HP-{time.time_ns()}-{i}") for i in range(50_000)]})
    ),
}


def read_answer(conn: socket.socket) -> int:
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            return 0
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0
    )
    while len(body) < length:
        more = conn.recv(65536)
        if not more:
            break
        body += more
    return int(head.split(b" ")[1])


def main() -> None:
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with socket.create_connection((HOST, PORT)) as conn:
            while not stop.is_set():
                started = time.perf_counter()
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                read_answer(conn)
                latencies.append(time.perf_counter() - started)
                time.sleep(0.002)

    thread = threading.Thread(target=probe)
    thread.start()
    time.sleep(1)
    idle = max(latencies)
    for name, build in HOSTILE.items():
        request = build()  # built before the probe window opens: the client's own work
        mark = len(latencies)
        statuses: list[object] = []
        for _ in range(5):
            with socket.create_connection((HOST, PORT), timeout=60) as conn:
                try:
                    conn.sendall(request)
                    statuses.append(read_answer(conn))
                except OSError as exc:
                    statuses.append(type(exc).__name__)
        time.sleep(0.1)
        worst = max(latencies[mark:]) * 1000
        print(f"{name:34} answers {sorted(set(map(str, statuses)))}  probe max {worst:7.1f} ms")
    stop.set()
    thread.join()
    print(f"{'(idle)':34} probe max {idle * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
