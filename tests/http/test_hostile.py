"""What a hostile or careless caller tried, each against a real server (raw sockets where needed).

Each test names the finding of the hardening issue it pins; every one failed before its fix.
"""

from __future__ import annotations

import asyncio
import select
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from support import wait_until
from support.cluster import CLUSTER_SHARDS
from support.factories import coupon_json
from support.live_server import LiveServer
from support.rawhttp import read_answer
from support.redis_server import RedisServer

ADMIN = "hostile-admin-key-0123456789"
OTHER = "hostile-other-key-0123456789"


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def header(answer: bytes, name: bytes) -> bytes | None:
    head = answer.partition(b"\r\n\r\n")[0]
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def problem(answer: bytes) -> dict[str, object]:
    assert header(answer, b"content-type") == b"application/problem+json", answer[:300]
    body: dict[str, object] = orjson.loads(answer.partition(b"\r\n\r\n")[2])
    return body


def closed(conn: socket.socket, within: float) -> bool:
    """Whether the server closes ``conn`` within ``within`` seconds (reading and dropping data)."""
    conn.settimeout(within)
    try:
        while conn.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


@pytest.fixture(scope="module")
def guarded(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with short connection limits, keys on, and its log in a file."""
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    server = LiveServer(
        redis_server.url, log=log, COUPON_POOL_ADMIN_KEYS=ADMIN, KEEP_ALIVE_S="1", HEADER_TIMEOUT_S="1",
        MAX_HEADER_BYTES="8192", MAX_CONNECTIONS="40",
    )  # fmt: skip
    server.log = log  # type: ignore[attr-defined]
    yield server
    server.stop()


def connect(server: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def request(path: str, *, method: str = "GET", key: str = ADMIN, extra: str = "", body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n{extra}"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


# 1. An accepted value that cannot be represented later.


async def test_an_expiry_past_year_9999_in_utc_is_refused_at_upload(client: httpx.AsyncClient) -> None:
    far = coupon_json("FAR")
    far["expires_at"] = "9999-12-31T23:59:59-23:59"  # year 10000 in UTC
    response = await client.post("/v1/coupons", json={"coupons": [far]})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "expires_at"


async def test_the_latest_accepted_expiry_round_trips_through_every_operation(
    client: httpx.AsyncClient,
) -> None:
    latest = coupon_json("LATEST", type="FREE")
    latest["expires_at"] = "9999-12-31T23:59:59.999Z"
    assert (await client.post("/v1/coupons", json={"coupons": [latest]})).status_code == 201
    allocated = await client.post("/v1/allocations", json={"user_id": "far-user", "type": "FREE"})
    assert allocated.status_code == 201
    assert allocated.json()["expires_at"] == "9999-12-31T23:59:59.999000Z"
    assert (await client.get("/v1/coupons/LATEST")).status_code == 200
    redeemed = await client.post("/v1/redemptions", json={"code": "LATEST", "user_id": "far-user"})
    assert redeemed.status_code == 201


# 2. Unhandled errors lose the request id and the connection.


async def test_an_unexpected_error_is_problem_json_with_its_request_id_on_a_connection_kept_open(
    guarded: LiveServer, redis: Redis
) -> None:
    await redis.hset("{cp}:c:BROKEN", mapping={"type": "FREE", "dk": "flat", "dv": "1", "exp": "not-a-number",
                                               "max": "1", "alloc": "0", "used": "0", "ct": "0"})  # fmt: skip
    with connect(guarded) as conn:
        conn.sendall(request("/v1/coupons/BROKEN", extra="X-Request-ID: broken-1\r\n"))
        answer = read_answer(conn)
        assert status_of(answer) == 500
        assert problem(answer)["code"] == "internal_error"
        assert header(answer, b"x-request-id") == b"broken-1"
        assert header(answer, b"connection") != b"close"
        conn.sendall(request("/healthz"))
        assert status_of(read_answer(conn)) == 200  # the same connection serves on
    log = guarded.log  # type: ignore[attr-defined]
    wait_until(lambda: b'"request_id":"broken-1"' in log.read_bytes())
    line = next(ln for ln in log.read_bytes().splitlines() if b'"request_id":"broken-1"' in ln)
    assert orjson.loads(line)["status"] == 500


# 3. Audit cursor overflow.


async def test_the_last_possible_audit_cursor_is_an_empty_page_and_one_past_it_a_422(
    client: httpx.AsyncClient, request: pytest.FixtureRequest
) -> None:
    slot = f"-{CLUSTER_SHARDS}" if request.node.callspec.params["client"] == "cluster" else ""
    last = "9999999999999999999-9999999999999999999" + slot  # 19 digits: below 2^64, as Redis's
    response = await client.get("/v1/audit", params={"after": last})
    assert response.status_code == 200
    assert response.json() == {"entries": [], "next": last}
    beyond = await client.get("/v1/audit", params={"after": "18446744073709551615-0" + slot})
    assert beyond.status_code == 422


# 4. Connections that never finish.


def test_headers_that_never_end_get_408_after_the_header_timeout(guarded: LiveServer) -> None:
    with connect(guarded) as conn:
        conn.sendall(b"GET /v1/stats HTTP/1.1\r\nHost: t\r\n")
        started = time.monotonic()
        answer = read_answer(conn)
        assert 0.9 <= time.monotonic() - started < 3
        assert status_of(answer) == 408
        assert problem(answer)["code"] == "request_timeout"
        assert closed(conn, 2)


def test_a_connection_that_sends_nothing_is_closed_after_keep_alive(guarded: LiveServer) -> None:
    with connect(guarded) as conn:
        started = time.monotonic()
        assert closed(conn, 5)
        assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "sent",
    [
        b"X-Big: " + b"a" * 64 * 1024,  # still arriving
        b"X-Big: " + b"a" * 64 * 1024 + b"\r\n\r\n",  # whole, in one read
        b"X-A: b\r\n" * 5000 + b"\r\n",  # many small ones
    ],
    ids=["unfinished", "whole", "many"],
)
def test_headers_past_the_cap_get_431_and_the_connection_closes(guarded: LiveServer, sent: bytes) -> None:
    with connect(guarded) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + sent)
        answer = read_answer(conn)
        assert status_of(answer) == 431
        assert problem(answer)["code"] == "headers_too_large"
        assert header(answer, b"x-request-id")
        assert closed(conn, 2)


def test_connections_past_the_cap_get_503_rather_than_exhausting_the_process(guarded: LiveServer) -> None:
    held = [connect(guarded) for _ in range(40)]  # MAX_CONNECTIONS: the next one is one too many
    try:
        refused = 0
        for _ in range(5):
            with connect(guarded) as extra:
                extra.settimeout(2)
                answer = read_answer(extra)
                assert status_of(answer) == 503
                assert problem(answer)["code"] == "too_many_connections"
                assert header(answer, b"retry-after") == b"1"
                refused += 1
        assert refused == 5
    finally:
        for conn in held:
            conn.close()
    wait_until(lambda: httpx.get(f"{guarded.url}/healthz").status_code == 200)


def test_a_thousand_slow_connections_do_not_stop_other_callers(redis_server: RedisServer) -> None:
    """1,000 connections trickling headers (one byte a second) while others allocate."""
    server = LiveServer(redis_server.url, HEADER_TIMEOUT_S="30", KEEP_ALIVE_S="30")
    stop = threading.Event()
    slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(1000)]
    try:
        for conn in slow:
            conn.sendall(b"POST /v1/allocations HTTP/1.1\r\nHost: t\r\n")

        def trickle() -> None:
            while not stop.wait(1):
                for conn in slow:
                    conn.send(b"X")

        threading.Thread(target=trickle, daemon=True).start()
        with httpx.Client(base_url=server.url) as http:
            coupons = [coupon_json(f"SLOW-{i}", max_usages=1000) for i in range(5)]
            assert http.post("/v1/coupons", json={"coupons": coupons}).status_code == 201
            times = []
            for i in range(200):
                started = time.monotonic()
                assert http.post("/v1/allocations", json={"user_id": f"u{i}"}).status_code == 201
                times.append(time.monotonic() - started)
        assert max(times) < 1.0, max(times)
    finally:
        stop.set()
        for conn in slow:
            conn.close()
        server.stop()


# 5. Quadratic input handling on the event loop.


def test_hostile_queries_do_not_hold_the_loop(guarded: LiveServer) -> None:
    """Five 8,000-parameter queries while a probe asks /healthz: the probe is never held."""
    hostile = "&".join(f"p{i}=" for i in range(8000))
    stalls: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=guarded.url) as http:
            while not done.is_set():
                started = time.monotonic()
                http.get("/healthz")
                stalls.append(time.monotonic() - started)

    prober = threading.Thread(target=probe)
    prober.start()
    statuses = []
    try:
        time.sleep(0.2)
        for _ in range(5):
            with connect(guarded) as conn:
                conn.sendall(request(f"/v1/audit?{hostile}"))
                statuses.append(status_of(read_answer(conn)))
    finally:
        done.set()
        prober.join()
    assert max(stalls) < 0.5, max(stalls)
    assert set(statuses) <= {414, 431}


async def test_a_query_over_the_limit_is_414_before_it_is_parsed(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/audit?" + "&".join(f"p{i}=" for i in range(1500)))
    assert response.status_code == 414
    assert response.json()["code"] == "query_too_long"


# 6. Framing errors.


@pytest.mark.parametrize(
    "framing",
    [
        "Content-Length: abc\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 2\r\nContent-Length: 3\r\n",
        "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
    ],
    ids=["not-a-number", "negative", "twice", "with-transfer-encoding"],
)
def test_a_bad_content_length_is_problem_json(guarded: LiveServer, framing: str) -> None:
    with connect(guarded) as conn:
        conn.sendall(f"POST /v1/allocations HTTP/1.1\r\nHost: t\r\n{framing}\r\n{{}}".encode())
        answer = read_answer(conn)
        assert status_of(answer) == 400
        assert problem(answer)["code"] == "invalid_content_length"
        assert header(answer, b"x-request-id")


# 7. A repeated Authorization header.


def test_a_repeated_authorization_header_is_refused(guarded: LiveServer) -> None:
    with connect(guarded) as conn:
        conn.sendall(request("/v1/stats", extra=f"Authorization: Bearer {OTHER}\r\n"))
        answer = read_answer(conn)
        assert status_of(answer) == 401
        assert "one Authorization header" in str(problem(answer)["detail"])


# 9. Redis full.


def test_a_full_redis_refuses_uploads_first_then_answers_507_not_500(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Uploads stop at UPLOAD_MEMORY_SHARE of maxmemory, allocations go on; at maxmemory
    itself every change is 507 store_full, and /readyz and /metrics show the headroom."""
    redis = RedisServer(tmp_path_factory.mktemp("full"), "--maxmemory", "6mb").start()
    server = LiveServer(redis.url, UPLOAD_MEMORY_SHARE="0.5")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answers = []
            for batch in range(40):
                coupons = [coupon_json(f"FILL-{batch}-{i}", max_usages=1000) for i in range(1000)]
                answers.append(http.post("/v1/coupons", json={"coupons": coupons}))
                if answers[-1].status_code != 201:
                    break
            refused = answers[-1]
            assert refused.status_code == 507, refused.text
            assert refused.json()["code"] == "store_full"
            memory = http.get("/readyz").json()["memory"]
            assert memory["max_bytes"] == 6 * 1024 * 1024
            assert memory["uploads_stop_at_bytes"] == 3 * 1024 * 1024
            # The refusal came at the mark; once the refused upload's buffers are freed, used
            # memory may sit a few KB under it (seen: 13 KB), so the check allows 5 %.
            assert memory["used_bytes"] >= 0.95 * memory["uploads_stop_at_bytes"]
            assert "coupon_pool_redis_maxmemory_bytes 6.291456e+06" in http.get("/metrics").text
            allocated = [http.post("/v1/allocations", json={"user_id": f"u{i}"}) for i in range(50)]
            assert {a.status_code for a in allocated} == {201}  # the headroom serves them

            with SyncRedis(port=redis.port) as admin:  # now past maxmemory, whatever moves meanwhile
                used = int(admin.info("memory")["used_memory"])
                admin.config_set("maxmemory", used - 512 * 1024)
                with pytest.raises(OutOfMemoryError):
                    admin.set("one-more", "x" * 1000)
            full = http.post("/v1/allocations", json={"user_id": "late"})
            assert full.status_code == 507
            assert full.json()["code"] == "store_full"
            assert http.get("/v1/stats").status_code == 200  # reading goes on
            # A release frees an allocation: its function runs on a full Redis (allow-oom).
            held = allocated[0].json()["code"]
            released = http.post("/v1/releases", json={"code": held, "user_id": "u0"})
            assert released.status_code == 201, released.text
    finally:
        server.stop()
        redis.stop()


# 8 and 10: MEGADEAL callers that hang up, and a process paused in a burst.


async def megadeal_request(port: int, user: str, hang_up_after: float | None) -> tuple[int | None, float]:
    """Send one MEGADEAL allocation; its status (None: hung up first) and when it ended."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = orjson.dumps({"user_id": user, "type": "MEGADEAL"})
    writer.write(b"POST /v1/allocations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    try:
        async with asyncio.timeout(hang_up_after):
            status_line = await reader.readline()
    except TimeoutError:
        writer.close()
        return None, time.monotonic()
    writer.close()
    return int(status_line.split()[1]), time.monotonic()


async def allocation_times(redis: Redis) -> dict[str, int]:
    """user id -> when it was allocated a MEGADEAL coupon (ms since the epoch): the time the
    admitting script recorded in the coupon's holder field, the same as in the gate's window."""
    times = {}
    async for key in redis.scan_iter(match="{cp}:c:MD-*", count=1000):
        for field, value in (await redis.hgetall(key)).items():
            if field.startswith("u:"):
                times[field[2:]] = int(value.partition(":")[0])
    return times


@pytest.fixture
def two_servers(redis_server: RedisServer, redis: Redis) -> Iterator[tuple[LiveServer, LiveServer]]:
    first, second = LiveServer(redis_server.url), LiveServer(redis_server.url)
    with httpx.Client(base_url=first.url) as http:
        coupons = [coupon_json(f"MD-{i}", type="MEGADEAL") for i in range(200)]
        assert http.post("/v1/coupons", json={"coupons": coupons}).status_code == 201
    yield first, second
    for server in (first, second):
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGCONT)
            server.stop()


async def test_megadeal_callers_that_hang_up_leave_the_queue_unserved(
    two_servers: tuple[LiveServer, LiveServer], redis: Redis
) -> None:
    """60 at once over two processes, 30 of whose callers close after 1 s: none of those is
    allocated anything after it left, and they take no capacity from the callers still there."""
    first, second = two_servers
    started, wall = time.monotonic(), time.time()
    outcomes = await asyncio.gather(*(
        megadeal_request((first, second)[i % 2].port, f"u{i}", 1.0 if i % 4 < 2 else None) for i in range(60)
    ))  # fmt: skip
    await asyncio.sleep(0.5)
    allocated = await allocation_times(redis)
    hung_up = [f"u{i}" for i in range(60) if i % 4 < 2]
    late = [u for u in hung_up if u in allocated and allocated[u] / 1000 > wall + 1.3]
    assert late == []
    stayed = [(status, at - started) for i, (status, at) in enumerate(outcomes) if i % 4 >= 2]
    assert {status for status, _ in stayed} == {201}
    assert max(at for _, at in stayed) < 5.0  # 30 callers at 10 a second, after the first second's


async def test_a_paused_process_holds_nobody_up_and_its_waiters_take_their_turn_when_it_wakes(
    two_servers: tuple[LiveServer, LiveServer], redis: Redis
) -> None:
    """100 MEGADEAL requests sent 40 ms apart, alternating between two processes; the first
    is stopped (SIGSTOP) from 4 s to 11 s. Its silent waiters leave the queue, so the other
    process's are served meanwhile, in their order; when it wakes, its waiters take their
    turn within their deadlines. Never more than 10 admissions in a rolling second, nobody
    answered after its 10 s cap."""
    paused, running = two_servers

    async def pause() -> None:
        await asyncio.sleep(4)
        paused.process.send_signal(signal.SIGSTOP)
        await asyncio.sleep(7)
        paused.process.send_signal(signal.SIGCONT)

    async def send(i: int) -> tuple[float, int | None, float]:
        await asyncio.sleep(i * 0.04)
        sent = time.monotonic()
        status, at = await megadeal_request((paused, running)[i % 2].port, f"p{i}", None)
        return sent, status, at

    pausing = asyncio.create_task(pause())
    outcomes = await asyncio.gather(*(send(i) for i in range(100)))
    await pausing
    served = [i for i, (_, status, _) in enumerate(outcomes) if status == 201]
    assert len(served) >= 95, sorted(Counter(status for _, status, _ in outcomes).items())
    assert max(at - sent for sent, status, at in outcomes) < 10.5
    allocated = await allocation_times(redis)
    times = sorted(allocated.values())  # integer ms: the window is exactly 1,000 of them
    assert max(sum(1 for u in times if t <= u < t + 1000) for t in times) <= 10
    # The running process's requests, in their order: none served before an earlier one
    # still waiting, none refused while a later one is served.
    # (0.2 s: the few tickets that can be admitted at once are admitted in the order they
    # call again, milliseconds apart.)
    mine = [(outcomes[i][0], outcomes[i][1], allocated.get(f"p{i}")) for i in range(1, 100, 2)]
    served_mine = [(sent, at / 1000) for sent, status, at in mine if status == 201 and at is not None]
    out_of_turn = [
        (a, b) for a in served_mine for b in served_mine if b[0] - a[0] > 0.2 and b[1] < a[1] - 0.01
    ]
    assert out_of_turn == [], "a request was served before an earlier one still waiting"
    refused = [sent for sent, status, _ in mine if status != 201]
    assert all(sent < min(refused) + 0.2 for sent, _ in served_mine) if refused else True


# Beyond the list: memory under parallel large uploads.


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of a process and its children (the upload worker), in MB."""
    total = 0
    for task in [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]:
        for line in Path(f"/proc/{task}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


def upload_in_two_steps(port: int, body: bytes) -> int:
    """Send the headers, and the body only if no answer comes first (a refusal)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.sendall(b"POST /v1/coupons HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
        readable, _, _ = select.select([conn], [], [], 0.5)
        if not readable:
            conn.sendall(body)
        return status_of(read_answer(conn))


def test_ten_concurrent_large_uploads_are_bounded_and_the_rest_refused_before_their_bodies(
    redis_server: RedisServer, redis: Redis
) -> None:
    server = LiveServer(redis_server.url)
    try:
        body = orjson.dumps({"coupons": [coupon_json(f"PAR-{i:05d}") for i in range(50_000)]})
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda: statuses.append(upload_in_two_steps(server.port, body)))
                   for _ in range(10)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(statuses) == [201] * 2 + [429] * 8  # MAX_UPLOADS (2) at a time
        peak = peak_rss_mb(server.process.pid)
        print(f"peak resident memory, server and upload worker: {peak:.0f} MB")
        assert peak < 600
    finally:
        server.stop()
