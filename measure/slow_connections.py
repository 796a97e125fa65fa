"""Hold N slow connections open against a server: each sends a request line, then one
header byte a second, never finishing its headers.

    python measure/slow_connections.py URL [N] [SECONDS]     (defaults: 1000 connections, 30 s)

Run a bench beside it to see what they cost other callers, e.g.
    coupon-pool bench allocate --duration 8 --connections 20 --json   (alone, then with this)
The server must allow the connections (MAX_CONNECTIONS) and keep them (HEADER_TIMEOUT_S
above SECONDS), else it closes them, which is the point of those limits.
"""

from __future__ import annotations

import socket
import sys
import time

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
host, port = url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1])

conns = [socket.create_connection((host, port)) for _ in range(count)]
for conn in conns:
    conn.sendall(b"POST /v1/allocations HTTP/1.1\r\nHost: t\r\n")
print(f"{count} slow connections open", flush=True)
ends = time.monotonic() + seconds
closed = 0
while time.monotonic() < ends:
    time.sleep(1)
    for conn in list(conns):
        try:
            conn.send(b"X")
        except OSError:
            conns.remove(conn)
            closed += 1
print(f"done: {closed} of them closed by the server", flush=True)
