"""Signed webhooks (README, Events): every event of the trail POSTed at least once by the app
processes, through a receiver that fails for a while, a process killed mid-delivery, and
batches parked past the retry horizon then redelivered by command."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest
from redis import Redis

from coupon_pool.http import delivery
from coupon_pool.http.delivery import Policy
from coupon_pool.http.middleware import JsonLines
from coupon_pool.pool.keys import Layout
from coupon_pool.settings import Settings
from coupon_pool.webhooks import Outcome, Sender, sign, verify
from support import REPO, free_port, wait_until
from support.cluster import CLUSTER_SHARDS, Cluster
from support.live_server import LiveServer
from support.redis_server import RedisServer
from support.webhooks import Receiver, compare, coupons, mixed_load, trail

README = (REPO / "README.md").read_text()
SECRET = "whsec-test-0123456789abcdef"
SHARDS = 4


@pytest.fixture
def hooks_redis(redis_server: RedisServer) -> RedisServer:
    """The suite's Redis, each test in a namespace of its own."""
    return redis_server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver()
    yield got
    got.stop()


def env_of(receiver: Receiver, namespace: str, **more: str) -> dict[str, str]:
    return {
        "KEY_NAMESPACE": namespace, "POOL_SHARDS": str(SHARDS), "WEBHOOK_URL": receiver.url,
        "WEBHOOK_SECRET": SECRET, "WEBHOOK_BATCH": "20", "WEBHOOK_BACKOFF_S": "0.05",
        "WEBHOOK_MAX_BACKOFF_S": "0.4", "WEBHOOK_LEASE_S": "1", **more,
    }  # fmt: skip


def upload(url: str, count: int = 300) -> None:
    assert httpx.post(f"{url}/v1/coupons", json={"coupons": coupons(count)}, timeout=30).status_code == 201


def allocate_and_redeem(url: str, users: str, count: int) -> None:
    """``count`` coupons allocated to users ``<users><i>`` and redeemed by them."""
    for i in range(count):
        code = httpx.post(f"{url}/v1/allocations", json={"user_id": f"{users}{i}"}).json()["code"]
        redeemed = httpx.post(f"{url}/v1/redemptions", json={"code": code, "user_id": f"{users}{i}"})
        assert redeemed.status_code == 201


def all_delivered(receiver: Receiver, redis_url: str, namespace: str, timeout: float = 25) -> None:
    def done() -> bool:
        return not compare(receiver, trail(redis_url, namespace, SHARDS)).missing

    wait_until(done, timeout=timeout)


def test_a_signature_verifies_and_a_changed_body_or_a_stale_time_does_not() -> None:
    body = b'{"events":[{"id":"1-0","op":"allocate"}]}'
    header = sign(SECRET, body, now=1_800_000_000.5)
    assert re.fullmatch(r"t=1800000000,v1=[0-9a-f]{64}", header)
    assert verify(SECRET, header, body, now=1_800_000_100)
    for i in range(len(body)):  # any one byte changed
        changed = body[:i] + bytes([body[i] ^ 1]) + body[i + 1 :]
        assert not verify(SECRET, header, changed, now=1_800_000_100)
    assert not verify("another-secret-0123456789", header, body, now=1_800_000_100)
    assert not verify(SECRET, header, body, now=1_800_000_301)  # past the 300 s window
    assert verify(SECRET, header, body, now=1_800_000_600, tolerance_s=600)
    assert not verify(SECRET, "v1=" + header.split("v1=")[1], body, now=1_800_000_000)  # no t
    assert not verify(SECRET, "garbage", body, now=1_800_000_000)


def documented_verify() -> Callable[[str, str, bytes], bool]:
    """README's snippet for receivers, as a receiver would copy it."""
    section = README[README.index("## Webhooks") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert snippet is not None
    scope: dict[str, Any] = {}
    exec(snippet.group(1), scope)
    return cast(Callable[[str, str, bytes], bool], scope["verify"])


def test_readmes_snippet_verifies_as_verify_does() -> None:
    body, now = b'{"events":[]}', time.time()
    readme_verify = documented_verify()
    assert readme_verify(SECRET, sign(SECRET, body, now), body)
    assert not readme_verify(SECRET, sign(SECRET, body, now - 301), body)
    assert not readme_verify(SECRET, sign(SECRET, body, now), body + b"\n")


@pytest.mark.parametrize("url", ["https://h:abc/in", "https://[::1/in"])
def test_a_url_httpx_cannot_post_to_is_a_failed_post_not_an_exception(url: str) -> None:
    async def post() -> Outcome:
        sender = Sender(url, SECRET, timeout_s=1)
        try:
            return await sender.post(b'{"events":[]}')
        finally:
            await sender.aclose()

    outcome = asyncio.run(post())
    assert (outcome.ok, outcome.status) == (False, None)
    assert outcome.reason.startswith("InvalidURL: ")


def test_two_processes_deliver_every_event_once_the_receiver_answers(
    hooks_redis: RedisServer, tmp_path: Path
) -> None:
    receiver = Receiver()
    receiver.failing = True  # until it has refused a POST under load (a time a slow start could use up)
    env = env_of(receiver, "hooks-two")
    servers = [LiveServer(hooks_redis.url, log=tmp_path / f"app{i}.log", **env) for i in range(2)]
    try:
        upload(servers[0].url)
        load = asyncio.run(mixed_load([s.url for s in servers], seconds=3, workers=4))
        wait_until(lambda: bool(receiver.answered(500)), timeout=25)
        receiver.failing = False
        load.answers.update(asyncio.run(mixed_load([s.url for s in servers], seconds=3, workers=4)).answers)
        assert load.answers["allocate 201"] > 50
        assert load.answers["redeem 201"]
        assert load.answers["release 201"]
        all_delivered(receiver, hooks_redis.url, "hooks-two")

        outcome = compare(receiver, trail(hooks_redis.url, "hooks-two", SHARDS))
        assert outcome.missing == []
        assert outcome.extra == []
        assert receiver.answered(500)
        readme_verify = documented_verify()
        for r in receiver.received:  # every POST, failed or not, signed over its exact body
            assert verify(SECRET, r.signature, r.body, now=r.at), r.signature
            assert readme_verify(SECRET, r.signature, r.body)
            assert not verify(SECRET, r.signature, r.body + b" ", now=r.at)
            assert not readme_verify(SECRET, r.signature, r.body[1:])
        ops = {e["op"] for r in receiver.answered(200) for e in orjson.loads(r.body)["events"]}
        assert {"upload", "allocate", "redeem", "release"} <= ops
    finally:
        for server in servers:
            server.stop()
        receiver.stop()


def test_on_a_redis_cluster_every_event_is_delivered_once_the_receiver_answers(
    redis_cluster: Cluster, tmp_path: Path
) -> None:
    redis_cluster.flush()
    receiver = Receiver()
    receiver.failing = True  # until it has refused a POST under load
    env = env_of(receiver, "cp", REDIS_CLUSTER="1", POOL_SHARDS=str(CLUSTER_SHARDS))
    servers = [LiveServer(redis_cluster.url, log=tmp_path / f"app{i}.log", **env) for i in range(2)]
    try:
        upload(servers[0].url)
        asyncio.run(mixed_load([s.url for s in servers], seconds=1.5, workers=4))
        wait_until(lambda: bool(receiver.answered(500)), timeout=25)
        receiver.failing = False
        asyncio.run(mixed_load([s.url for s in servers], seconds=1.5, workers=4))

        def done() -> bool:
            return not compare(receiver, trail(redis_cluster.url, "cp", CLUSTER_SHARDS, cluster=True)).missing

        wait_until(done, timeout=25)
        assert compare(receiver, trail(redis_cluster.url, "cp", CLUSTER_SHARDS, cluster=True)).extra == []
        assert receiver.answered(500)
    finally:
        for server in servers:
            server.stop()
        receiver.stop()


def test_the_batches_of_a_killed_process_are_delivered_by_the_other(
    hooks_redis: RedisServer, receiver: Receiver, tmp_path: Path
) -> None:
    namespace, layout = "hooks-kill", Layout("hooks-kill", SHARDS)
    receiver.failing = True
    env = env_of(receiver, namespace)
    first = LiveServer(hooks_redis.url, log=tmp_path / "first.log", **env)
    second = None
    try:
        upload(first.url)
        asyncio.run(mixed_load([first.url], seconds=1.5, workers=4))
        # The first process holds every stream, and has batches handed to it, unacknowledged.
        pending = sum(p["pending"] for p in pending_of(hooks_redis, layout))
        assert pending > 0
        second = LiveServer(hooks_redis.url, log=tmp_path / "second.log", **env)
        first.process.kill()
        first.process.wait(10)
        receiver.failing = False
        asyncio.run(mixed_load([second.url], seconds=1, workers=2))
        all_delivered(receiver, hooks_redis.url, namespace)
        assert compare(receiver, trail(hooks_redis.url, namespace, SHARDS)).extra == []
    finally:
        if first.process.poll() is None:
            first.stop()
        if second is not None:
            second.stop()


def test_events_of_other_ops_are_acknowledged_unsent(
    hooks_redis: RedisServer, receiver: Receiver, tmp_path: Path
) -> None:
    namespace = "hooks-ops"
    env = env_of(receiver, namespace, WEBHOOK_OPS="redeem")
    server = LiveServer(hooks_redis.url, log=tmp_path / "app.log", **env)
    try:
        upload(server.url, 20)
        allocate_and_redeem(server.url, "o", 5)
        with Redis.from_url(hooks_redis.url, decode_responses=True) as redis:
            redeems = set(redeem_ids(redis, Layout(namespace, SHARDS)))
        assert len(redeems) == 5
        wait_until(lambda: set(receiver.acknowledged_ids()) == redeems, timeout=15)
        skipped = "coupon_pool_webhook_events_skipped_total"  # the upload's, the allocations'
        wait_until(lambda: metric(httpx.get(f"{server.url}/metrics").text, skipped) >= 6)
        assert all(e["op"] == "redeem" for r in receiver.received for e in orjson.loads(r.body)["events"])
    finally:
        server.stop()
    with Redis.from_url(hooks_redis.url) as redis:  # stopped, it gave its leases up
        assert not redis.exists(*(k.webhook_lease("default") for k in Layout(namespace, SHARDS).slots))


def children(pid: int) -> set[int]:
    """The processes ``pid`` started by multiprocessing's spawn (Linux's /proc), not its
    resource tracker."""
    tasks = Path(f"/proc/{pid}/task").iterdir()  # a thread's children are listed under its task
    found = {int(child) for task in tasks for child in (task / "children").read_text().split()}
    return {child for child in found if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited


def test_an_app_not_started_by_serve_warns_that_nothing_in_it_delivers(
    hooks_redis: RedisServer, receiver: Receiver, tmp_path: Path
) -> None:
    def warnings(log: Path) -> list[str]:
        lines = [orjson.loads(line) for line in log.read_bytes().splitlines() if line.startswith(b"{")]
        return [
            line["message"] for line in lines if line.get("event") == "webhook" and line["level"] == "warning"
        ]

    env = env_of(receiver, "hooks-bare")
    environ = {name: value for name, value in os.environ.items() if name != delivery.SERVE_PID}
    served = LiveServer(hooks_redis.url, log=tmp_path / "serve.log", **env)
    served.stop()
    port = free_port()
    bare_log = tmp_path / "uvicorn.log"
    with open(bare_log, "wb") as out:
        app = ["uvicorn", "--factory", f"--port={port}", "coupon_pool.http.app:create_app"]
        bare = subprocess.Popen(
            [sys.executable, "-m", *app], env={**environ, "REDIS_URL": hooks_redis.url, **env}, stdout=out
        )
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200, timeout=20)
    finally:
        bare.terminate()
        bare.wait(30)
    assert warnings(tmp_path / "serve.log") == []
    (warned,) = warnings(bare_log)
    assert "not started by `coupon-pool serve`: no process here delivers webhooks" in warned


def test_serve_delivers_from_a_process_of_its_own_and_starts_it_again_when_it_dies(
    hooks_redis: RedisServer, receiver: Receiver, tmp_path: Path
) -> None:
    namespace = "hooks-child"
    log = tmp_path / "app.log"
    server = LiveServer(hooks_redis.url, log=log, **env_of(receiver, namespace))
    try:
        wait_until(lambda: len(children(server.process.pid)) == 1)
        (first,) = children(server.process.pid)
        upload(server.url, 20)
        all_delivered(receiver, hooks_redis.url, namespace)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: len(children(server.process.pid) - {first}) == 1 and not alive(first), timeout=15)
        lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
        exited = [line for line in lines if line.get("event") == "delivery_process_exited"]
        assert [(e["level"], e["pid"], e["exitcode"]) for e in exited] == [("error", first, -signal.SIGKILL)]
        assert httpx.post(f"{server.url}/v1/allocations", json={"user_id": "after"}).status_code == 201
        all_delivered(receiver, hooks_redis.url, namespace)  # the new one delivers
    finally:
        server.stop()


def test_a_killed_serves_delivery_process_stops_and_a_stopped_ones_gives_its_leases_up(
    hooks_redis: RedisServer, receiver: Receiver, tmp_path: Path
) -> None:
    namespace = "hooks-orphan"
    leases = [k.webhook_lease("default") for k in Layout(namespace, SHARDS).slots]
    # Leases that would outlive the test: gone at its end only if the process gave them up.
    server = LiveServer(
        hooks_redis.url, log=tmp_path / "app.log", **env_of(receiver, namespace, WEBHOOK_LEASE_S="60")
    )
    try:
        wait_until(lambda: len(children(server.process.pid)) == 1)
        (delivering,) = children(server.process.pid)
        with Redis.from_url(hooks_redis.url) as redis:
            wait_until(lambda: redis.exists(*leases) == len(leases))
        server.process.kill()
        server.process.wait(10)
        wait_until(lambda: not alive(delivering), timeout=10)
    finally:
        if server.process.poll() is None:
            server.stop()
    with Redis.from_url(hooks_redis.url) as redis:  # it stopped as serve would have told it: leases given up
        assert not redis.exists(*leases)


def test_a_sigterm_to_the_whole_group_leaves_delivery_to_serve_which_stops_it_once_uvicorn_has(
    hooks_redis: RedisServer, receiver: Receiver, tmp_path: Path
) -> None:
    """As systemd stops a service (every process of its group gets SIGTERM): the delivery
    process is neither ended early nor started again while uvicorn finishes a request."""
    namespace = "hooks-group"
    log = tmp_path / "app.log"
    server = LiveServer(hooks_redis.url, log=log, SHUTDOWN_TIMEOUT_S="5", **env_of(receiver, namespace))
    try:
        wait_until(lambda: len(children(server.process.pid)) == 1)
        (delivering,) = children(server.process.pid)
        upload(server.url, 20)
        all_delivered(receiver, hooks_redis.url, namespace)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:  # its body never comes
            slow.sendall(b"POST /v1/allocations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                         b"Expect: 100-continue\r\nContent-Length: 40\r\n\r\n")  # fmt: skip
            # The app waits for the body: uvicorn's graceful shutdown will wait for the request.
            assert slow.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
            for pid in (delivering, server.process.pid):
                os.kill(pid, signal.SIGTERM)
            signalled, seen = time.monotonic(), set()
            while server.process.poll() is None:
                seen |= children(server.process.pid)
                time.sleep(0.05)
            assert time.monotonic() - signalled > 4  # SHUTDOWN_TIMEOUT_S: serve waited for the request
        assert seen <= {delivering}  # none started again
        assert server.process.returncode == -signal.SIGTERM
        wait_until(lambda: not alive(delivering), timeout=10)
    finally:
        if server.process.poll() is None:
            server.stop()
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert [line for line in lines if line.get("event", "").startswith("delivery_process")] == []
    with Redis.from_url(hooks_redis.url) as redis:  # stopped by serve: its leases given up
        assert not redis.exists(*(k.webhook_lease("default") for k in Layout(namespace, SHARDS).slots))


@pytest.mark.parametrize(
    ("hooked", "number"), [(False, signal.SIGINT), (True, signal.SIGINT), (True, signal.SIGTERM)]
)
def test_serve_ends_by_sigint_and_sigterm_alike_with_webhooks_and_without(
    hooks_redis: RedisServer, receiver: Receiver, tmp_path: Path, hooked: bool, number: signal.Signals
) -> None:
    env = env_of(receiver, "hooks-signals") if hooked else {"KEY_NAMESPACE": "hooks-signals"}
    server = LiveServer(hooks_redis.url, log=tmp_path / "app.log", **env)
    try:
        wait_until(lambda: len(children(server.process.pid)) == int(hooked))
        started = children(server.process.pid)
        server.process.send_signal(number)
        server.process.wait(30)
    finally:
        if server.process.poll() is None:
            server.stop()
    assert server.process.returncode == (0 if number == signal.SIGINT else -signal.SIGTERM)
    assert not any(alive(pid) for pid in started)


class Ended:
    """A delivery process that has exited."""

    pid = 4242

    def __init__(self, exitcode: int) -> None:
        self.exitcode = exitcode

    def join(self, timeout: float | None = None) -> None:
        return None

    def is_alive(self) -> bool:
        return False


class Running:
    """A delivery process that runs until told to stop."""

    pid, exitcode = 4343, None

    def __init__(self) -> None:
        self.ended = threading.Event()

    def join(self, timeout: float | None = None) -> None:
        self.ended.wait(timeout)

    def is_alive(self) -> bool:
        return not self.ended.is_set()

    def send_bytes(self, word: bytes) -> None:  # its pipe's end
        self.ended.set()

    def close(self) -> None:
        pass


class Recorded(JsonLines):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []

    def write(self, **fields: Any) -> None:
        self.lines.append(fields)


def test_a_delivery_process_that_dies_or_does_not_start_is_started_again_after_a_doubling_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delivery, "RESTART_PAUSE_S", 0.01)
    monkeypatch.setattr(delivery, "RESTART_MAX_PAUSE_S", 0.04)
    lines = Recorded()
    monkeypatch.setenv(delivery.SERVE_PID, "")  # start() sets it: undone after the test
    process = delivery.DeliveryProcess(Settings(), lines)
    running = Running()
    outcomes: list[object] = [Ended(1), OSError("no process left"), OSError("no process left"), running]

    def spawn() -> None:
        got = outcomes.pop(0)
        if isinstance(got, Exception):
            raise got
        process._process, process._tell, process._started = got, running, time.monotonic()

    monkeypatch.setattr(process, "_spawn", spawn)
    process.start()
    try:
        wait_until(lambda: not outcomes)
    finally:
        process.stop()
    process._watcher.join(5)
    assert not process._watcher.is_alive()
    assert [(line["event"], line.get("exitcode", line.get("error")), line["message"].rpartition(" in ")[2])
            for line in lines.lines] == [
        ("delivery_process_exited", 1, "0.01 s"),
        ("delivery_process_not_started", "OSError('no process left')", "0.02 s"),
        ("delivery_process_not_started", "OSError('no process left')", "0.04 s"),
    ]  # fmt: skip


def test_with_two_workers_one_delivery_process_delivers_and_sigterm_stops_them_all(
    hooks_redis: RedisServer, receiver: Receiver, tmp_path: Path
) -> None:
    namespace = "hooks-workers"
    server = LiveServer(hooks_redis.url, log=tmp_path / "app.log", WORKERS="2", **env_of(receiver, namespace))
    try:
        wait_until(lambda: len(children(server.process.pid)) == 3)  # two workers, one delivery process
        started = children(server.process.pid)
        upload(server.url, 20)
        for i in range(6):
            assert httpx.post(f"{server.url}/v1/allocations", json={"user_id": f"w{i}"}).status_code == 201
        all_delivered(receiver, hooks_redis.url, namespace)
        with Redis.from_url(hooks_redis.url, decode_responses=True) as redis:
            consumers = {c["name"] for k in Layout(namespace, SHARDS).slots
                         for c in redis.xinfo_consumers(k.audit, "webhook.default")}  # fmt: skip
        assert len(consumers) == 1  # one process delivers, not each worker
    finally:
        server.stop()
    assert not any(alive(pid) for pid in started)
    with Redis.from_url(hooks_redis.url) as redis:
        assert not redis.exists(*(k.webhook_lease("default") for k in Layout(namespace, SHARDS).slots))


CRM_SECRET = "crm-secret-0123456789abcdef"


def test_a_second_endpoint_gets_its_own_ops_signed_with_its_own_secret_and_a_refusing_one_holds_back_no_other(
    hooks_redis: RedisServer, receiver: Receiver, tmp_path: Path
) -> None:
    namespace = "hooks-two-endpoints"
    crm = Receiver()
    crm.failing = True
    endpoints = [{"name": "crm", "url": crm.url, "secret": CRM_SECRET, "ops": ["redeem"]}]
    env = env_of(receiver, namespace, WEBHOOK_ENDPOINTS=orjson.dumps(endpoints).decode())
    server = LiveServer(hooks_redis.url, log=tmp_path / "app.log", **env)
    try:
        upload(server.url, 20)
        allocate_and_redeem(server.url, "e", 5)
        all_delivered(receiver, hooks_redis.url, namespace)  # default: every event, while crm refuses
        wait_until(lambda: bool(crm.answered(500)))
        assert crm.acknowledged_ids() == []
        with Redis.from_url(hooks_redis.url, decode_responses=True) as redis:
            redeems = set(redeem_ids(redis, Layout(namespace, SHARDS)))
        crm.failing = False
        wait_until(lambda: set(crm.acknowledged_ids()) == redeems, timeout=15)
        for r in crm.received:  # its own secret signs its POSTs
            assert verify(CRM_SECRET, r.signature, r.body, now=r.at)
            assert not verify(SECRET, r.signature, r.body, now=r.at)
        assert all(e["op"] == "redeem" for r in crm.answered(200) for e in orjson.loads(r.body)["events"])

        def counted() -> dict[str, Any]:
            shown = httpx.get(f"{server.url}/v1/webhooks").json()
            return {e["endpoint"]: e for e in shown["endpoints"]}

        wait_until(lambda: counted()["crm"]["events_delivered"] == 5)
        status = counted()
        assert list(status) == ["default", "crm"]
        assert status["crm"]["group"] == "webhook.crm"
        assert status["crm"]["failures"] >= 1
        assert status["default"]["failures"] == 0
        text = httpx.get(f"{server.url}/metrics").text
        assert 'coupon_pool_webhook_events_delivered_total{endpoint="crm"} 5.0' in text
        written = compare(receiver, trail(hooks_redis.url, namespace, SHARDS)).expected
        assert metric(text, "coupon_pool_webhook_events_delivered_total") >= written  # default: every one

        lines = webhooks_command(hooks_redis, receiver, namespace, "status", **env)
        assert lines.returncode == 0, lines.stderr
        assert [orjson.loads(line)["endpoint"] for line in lines.stdout.splitlines()] == ["default", "crm"]
        one = webhooks_command(hooks_redis, receiver, namespace, "redeliver", "--endpoint", "crm", **env)
        assert (one.returncode, orjson.loads(one.stdout)) == (
            0,
            {"endpoint": "crm", "delivered": 0, "kept": 0},
        )
        unknown = webhooks_command(hooks_redis, receiver, namespace, "status", "--endpoint", "nope", **env)
        assert unknown.returncode == 2
        assert "no endpoint 'nope'; the endpoints: default, crm" in unknown.stderr
    finally:
        server.stop()
        crm.stop()


def redeem_ids(redis: Redis, layout: Layout) -> list[str]:
    ids = []
    for n, k in enumerate(layout.slots):
        for entry, fields in redis.xrange(k.audit):
            if fields["op"] == "redeem":
                ids.append(f"{entry}-{n}")
    return ids


def test_a_retry_waits_at_random_up_to_the_capped_exponential_step() -> None:
    policy = Policy(frozenset(), 100, 1000, backoff_s=0.5, max_backoff_s=4.0, lease_s=5, parked_max=10)
    for attempt, cap in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0), (1000, 4.0)]:
        waits = [policy.backoff(attempt) for _ in range(200)]
        assert all(0 <= w <= cap for w in waits)
        assert max(waits) > cap / 2  # spread over the range, not fixed


def pending_of(server: RedisServer, layout: Layout) -> list[dict[str, int]]:
    with Redis.from_url(server.url, decode_responses=True) as redis:
        return [{"pending": int(redis.xpending(k.audit, "webhook.default")["pending"])} for k in layout.slots]


def test_a_batch_past_the_retry_horizon_is_parked_counted_and_redelivered_by_command(
    hooks_redis: RedisServer, receiver: Receiver, tmp_path: Path
) -> None:
    namespace = "hooks-park"
    receiver.failing = True
    env = env_of(receiver, namespace, WEBHOOK_RETRY_HORIZON_S="1")
    server = LiveServer(hooks_redis.url, log=tmp_path / "app.log", **env)
    try:
        upload(server.url, 20)
        for i in range(10):
            assert httpx.post(f"{server.url}/v1/allocations", json={"user_id": f"p{i}"}).status_code == 201

        def parked() -> bool:
            text = httpx.get(f"{server.url}/metrics").text
            return (
                metric(text, "coupon_pool_webhook_batches_parked_total") >= 1
                and metric(text, "coupon_pool_webhook_parked_batches") >= 1
                and metric(text, "coupon_pool_webhook_failures_total") >= 2
                and metric(text, "coupon_pool_webhook_retries_total") >= 1
            )

        wait_until(parked, timeout=20)
        status = webhooks_command(hooks_redis, receiver, namespace, "status")
        assert status.returncode == 0, status.stderr
        shown = orjson.loads(status.stdout)
        assert shown["parked"] >= 1
        assert shown["endpoint"] == "default"
        # The counters of every process, from Redis: as /metrics showed them, or more since.
        assert shown["batches_parked"] >= 1
        assert shown["failures"] >= 2
        assert shown["retries"] >= 1
        assert shown["batches_delivered"] == shown["events_delivered"] == 0

        still = webhooks_command(hooks_redis, receiver, namespace, "redeliver")
        assert still.returncode == 3, still.stderr  # the receiver still fails: kept parked
        receiver.failing = False
        done = webhooks_command(hooks_redis, receiver, namespace, "redeliver")
        assert done.returncode == 0, done.stderr
        all_delivered(receiver, hooks_redis.url, namespace, timeout=10)
        after = webhooks_command(hooks_redis, receiver, namespace, "status")
        assert orjson.loads(after.stdout)["parked"] == 0
        assert all(verify(SECRET, r.signature, r.body, now=r.at) for r in receiver.received)
    finally:
        server.stop()


def metric(text: str, name: str) -> float:
    found = re.search(rf'^{name}{{endpoint="default"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def webhooks_command(
    server: RedisServer, receiver: Receiver, namespace: str, *argv: str, **more: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": server.url, **env_of(receiver, namespace), **more}
    return subprocess.run(
        [sys.executable, "-m", "coupon_pool", "webhooks", *argv],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
