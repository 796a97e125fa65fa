"""GET /dashboard in a real headless Chromium, against a real service and Redis."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, expect

from support.browser import chromium
from support.live_server import LiveServer
from support.redis_server import RedisServer

ADMIN_KEY = "dashboard-admin-key-0123456789"
CLIENT_KEY = "dashboard-client-key-0123456789"
FIELDS = (
    "created", "allocated", "used", "released", "rolled_back", "purged", "available",
    "held", "hold_expired", "scheduled", "disabled",
)  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


class Watched:
    """A page, with every console message and every request it made."""

    def __init__(self, browser: Browser) -> None:
        self.context = browser.new_context(viewport={"width": 1100, "height": 900})
        self.page: Page = self.context.new_page()
        self.problems: list[str] = []  # console errors and warnings, and uncaught exceptions
        self.requests: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        self.page.on("request", lambda request: self.requests.append(request.url))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"{message.type}: {message.text}")

    def errors(self) -> list[str]:
        return self.problems

    def origins(self) -> set[str]:
        return {f"{urlsplit(url).scheme}://{urlsplit(url).netloc}" for url in self.requests}

    def close(self) -> None:
        self.context.close()


def fill_pool(url: str, headers: dict[str, str] | None = None) -> None:
    coupons = [
        {"code": f"DASH-{t}-{i}", "type": t, "discount": {"kind": "flat", "value": "5"},
         "expires_at": "2099-01-01T00:00:00Z"}
        for t in ("FREE", "STANDARD", "MEGADEAL") for i in range(40)
    ]  # fmt: skip
    assert httpx.post(f"{url}/v1/coupons", json={"coupons": coupons}, headers=headers).status_code == 201
    for i in range(7):
        allocated = httpx.post(f"{url}/v1/allocations", json={"user_id": f"u{i}"}, headers=headers)
        assert allocated.status_code == 201
    code = allocated.json()["code"]
    assert httpx.post(
        f"{url}/v1/redemptions", json={"code": code, "user_id": "u6"}, headers=headers
    ).is_success


def shown_stats(page: Page) -> dict[str, dict[str, int]]:
    cells = page.locator("#types td[data-type][data-field]")
    shown: dict[str, dict[str, int]] = {}
    for i in range(cells.count()):
        td = cells.nth(i)
        field = td.get_attribute("data-field")
        if field in FIELDS:
            kind = td.get_attribute("data-type")
            assert kind is not None
            shown.setdefault(kind, {})[field] = int(td.inner_text().replace(",", ""))
    return shown


def expected_stats(stats: dict[str, Any]) -> dict[str, dict[str, int]]:
    by_type = {kind: {f: counts[f] for f in FIELDS} for kind, counts in stats["types"].items()}
    return {**by_type, "total": {f: stats["totals"][f] for f in FIELDS}}


@pytest.fixture
def flushed(redis_server: RedisServer) -> None:
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()


def test_the_page_shows_the_pool_as_stats_reads_it_and_reaches_nothing_else(
    browser: Browser, live_server: LiveServer, flushed: None
) -> None:
    fill_pool(live_server.url)
    watched = Watched(browser)

    watched.page.goto(f"{live_server.url}/dashboard")
    expect(watched.page.locator("#status")).to_have_text(re.compile("^updated "), timeout=5000)
    expect(watched.page.locator("#key-form")).to_be_hidden()  # no keys: nothing to ask

    stats = httpx.get(f"{live_server.url}/v1/stats").json()
    assert shown_stats(watched.page) == expected_stats(stats)
    assert stats["totals"]["allocated"] == 7
    expect(watched.page.locator("#gate-slots")).to_have_text("0 of 5")
    expect(watched.page.locator("#gate-admitted")).to_have_text("0 of 10")
    ops = watched.page.locator("#audit td[data-field=op]").all_inner_texts()
    assert ops[:2] == ["redeem", "allocate"]  # newest first
    assert watched.page.locator("#chart polyline").count() == 2
    expect(watched.page.locator("#webhooks")).to_be_hidden()  # no WEBHOOK_URL: nothing to show
    assert watched.errors() == []
    assert watched.origins() == {live_server.url}
    watched.close()


def test_an_allocation_shows_within_3_seconds(
    browser: Browser, live_server: LiveServer, flushed: None
) -> None:
    fill_pool(live_server.url)
    watched = Watched(browser)
    watched.page.goto(f"{live_server.url}/dashboard")
    allocated = watched.page.locator('#types td[data-type="FREE"][data-field="allocated"]')
    expect(allocated).to_have_text("0", timeout=5000)

    answer = httpx.post(f"{live_server.url}/v1/allocations", json={"user_id": "late", "type": "FREE"})

    expect(allocated).to_have_text("1", timeout=3000)
    expect(watched.page.locator("#audit tbody tr").first).to_contain_text(answer.json()["code"], timeout=3000)
    available = int(watched.page.locator('#types td[data-type="FREE"][data-field="available"]').inner_text())
    assert available == 39
    assert watched.errors() == []
    watched.close()


def test_the_page_shows_holds_and_coupons_whose_start_is_ahead_by_type(
    browser: Browser, live_server: LiveServer, flushed: None
) -> None:
    fill_pool(live_server.url)
    later = {"code": "DASH-LATER", "type": "FREE", "discount": {"kind": "flat", "value": "5"},
             "starts_at": "2098-01-01T00:00:00Z", "expires_at": "2099-01-01T00:00:00Z"}  # fmt: skip
    assert httpx.post(f"{live_server.url}/v1/coupons", json={"coupons": [later]}).status_code == 201
    for user, hold_s in (("holding", 3600), ("lapsing", 1)):
        body = {"user_id": user, "type": "FREE", "hold_s": hold_s}
        assert httpx.post(f"{live_server.url}/v1/allocations", json=body).status_code == 201
    watched = Watched(browser)

    watched.page.goto(f"{live_server.url}/dashboard")

    def shown(field: str, kind: str = "FREE") -> Locator:
        return watched.page.locator(f'#types td[data-type="{kind}"][data-field="{field}"]')

    # The one-second hold lapses (the stats read settles it): wait for it; nothing changes after it.
    expect(shown("hold_expired"), "hold expired").to_have_text("1", timeout=10_000)
    expect(shown("held"), "held").to_have_text("1")
    expect(shown("scheduled"), "scheduled").to_have_text("1")
    expect(shown("held", "total")).to_have_text("1")
    expect(shown("scheduled", "STANDARD")).to_have_text("0")
    assert httpx.post(f"{live_server.url}/v1/coupons/DASH-LATER/disable").status_code == 200
    expect(shown("disabled"), "disabled").to_have_text("1", timeout=5000)
    expect(shown("disabled", "STANDARD")).to_have_text("0")
    assert watched.page.evaluate("document.documentElement.scrollWidth") <= 1100  # the table fits
    assert watched.errors() == []
    watched.close()


def test_the_megadeal_gate_shows_its_admissions(
    browser: Browser, live_server: LiveServer, flushed: None
) -> None:
    fill_pool(live_server.url)
    for i in range(3):
        body = {"user_id": f"mega{i}", "type": "MEGADEAL"}
        assert httpx.post(f"{live_server.url}/v1/allocations", json=body).status_code == 201
    watched = Watched(browser)

    watched.page.goto(f"{live_server.url}/dashboard")

    # Admissions leave the rolling second soon after: the gate must show them while they last.
    expect(watched.page.locator("#gate-admitted")).to_have_text(re.compile(r"^[0-3] of 10$"), timeout=5000)
    gate = httpx.get(f"{live_server.url}/v1/megadeal").json()
    assert gate["max_concurrent"] == 5
    assert gate["slots_in_use"] == 0  # each request left its slot when it was answered
    watched.close()


def test_a_type_below_its_pool_low_threshold_is_marked_low_until_an_upload(
    browser: Browser, redis_server: RedisServer, flushed: None
) -> None:
    # A server of its own: its level checks write to the trail, which other tests here read.
    server = LiveServer(redis_server.url, POOL_LOW_STANDARD="50", POOL_LOW_INTERVAL_S="0.1")
    try:
        fill_pool(server.url)  # 40 of each type: STANDARD is low
        watched = Watched(browser)
        watched.page.goto(f"{server.url}/dashboard")

        marker = watched.page.locator('#types [data-low="STANDARD"]')
        expect(marker).to_have_text("low", timeout=5000)
        assert "below its pool-low threshold of 50" in (marker.get_attribute("title") or "")
        expect(watched.page.locator("#types [data-low]")).to_have_count(1)  # FREE, MEGADEAL: none
        more = [
            {"code": f"DASH-MORE-{i}", "type": "STANDARD", "discount": {"kind": "flat", "value": "5"},
             "expires_at": "2099-01-01T00:00:00Z"}
            for i in range(20)
        ]  # fmt: skip
        assert httpx.post(f"{server.url}/v1/coupons", json={"coupons": more}).status_code == 201
        expect(watched.page.locator("#types [data-low]")).to_have_count(0, timeout=5000)
        newest = watched.page.locator("#audit td[data-field=op]").first
        expect(newest).to_have_text("pool_recovered", timeout=5000)
        assert watched.errors() == []
        watched.close()
    finally:
        server.stop()


def test_webhooks_show_their_parked_batches_marked_once_retries_ran_out(
    browser: Browser, redis_server: RedisServer, flushed: None
) -> None:
    # A server of its own, whose endpoint refuses every POST (nothing listens on port 9) and
    # gives a batch up after a second: the upload's batch is parked.
    server = LiveServer(
        redis_server.url, KEY_NAMESPACE="dash-hooks", WEBHOOK_URL="http://127.0.0.1:9/hooks",
        WEBHOOK_SECRET="whsec-test-0123456789abcdef", WEBHOOK_RETRY_HORIZON_S="1",
        WEBHOOK_BACKOFF_S="0.05", WEBHOOK_MAX_BACKOFF_S="0.2",
    )  # fmt: skip
    try:
        watched = Watched(browser)
        watched.page.goto(f"{server.url}/dashboard")
        expect(watched.page.locator("#webhooks")).to_be_visible(timeout=5000)
        expect(watched.page.locator("#webhooks-parked")).to_have_text("0")
        expect(watched.page.locator("#webhooks [data-parked]")).to_have_count(0)

        fill_pool(server.url)

        marker = watched.page.locator("#webhooks [data-parked]")
        expect(marker).to_have_text("parked", timeout=10_000)
        parked = httpx.get(f"{server.url}/v1/webhooks").json()["endpoints"][0]["parked"]
        assert parked >= 1
        assert "coupon-pool webhooks redeliver" in (marker.get_attribute("title") or "")
        expect(watched.page.locator("#webhooks-parked")).to_contain_text(re.compile(r"^\d+ parked$"))
        expect(watched.page.locator("#webhooks-oldest")).not_to_have_text("-")
        assert watched.errors() == []
        watched.close()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def keyed_server(redis_server: RedisServer) -> Iterator[LiveServer]:
    server = LiveServer(
        redis_server.url, COUPON_POOL_ADMIN_KEYS=ADMIN_KEY, COUPON_POOL_CLIENT_KEYS=CLIENT_KEY
    )
    yield server
    server.stop()


def test_with_keys_the_page_asks_for_one_and_keeps_it_for_the_tab_only(
    browser: Browser, keyed_server: LiveServer, flushed: None
) -> None:
    fill_pool(keyed_server.url, {"Authorization": f"Bearer {ADMIN_KEY}"})
    watched = Watched(browser)
    page = watched.page

    page.goto(f"{keyed_server.url}/dashboard")
    expect(page.locator("#key-form")).to_be_visible()
    assert [url for url in watched.requests if "/v1/" in url] == []  # no call before it has a key
    page.fill("#key", ADMIN_KEY)
    page.click("button[type=submit]")
    expect(page.locator("#status")).to_have_text(re.compile("^updated "), timeout=5000)
    expect(page.locator('#types td[data-type="total"][data-field="allocated"]')).to_have_text("7")
    assert page.evaluate("sessionStorage.getItem('coupon-pool.api-key')") == ADMIN_KEY
    assert page.evaluate("localStorage.length") == 0
    assert watched.errors() == []

    other_tab = watched.context.new_page()
    other_tab.goto(f"{keyed_server.url}/dashboard")
    expect(other_tab.locator("#key-form")).to_be_visible()
    watched.close()


def test_a_client_key_shows_the_pool_but_not_the_audit_trail(
    browser: Browser, keyed_server: LiveServer, flushed: None
) -> None:
    watched = Watched(browser)
    page = watched.page
    page.goto(f"{keyed_server.url}/dashboard")
    page.fill("#key", CLIENT_KEY)
    page.click("button[type=submit]")

    expect(page.locator("#audit-problem")).to_have_text("The audit trail needs an admin key.", timeout=5000)
    expect(page.locator('#types td[data-type="total"][data-field="created"]')).to_have_text("0")
    watched.close()


def test_a_wrong_key_is_asked_for_again(browser: Browser, keyed_server: LiveServer) -> None:
    watched = Watched(browser)
    page = watched.page
    page.goto(f"{keyed_server.url}/dashboard")
    page.fill("#key", "not-a-key-of-this-service")
    page.click("button[type=submit]")

    expect(page.locator("#key-problem")).to_have_text("this key is not valid", timeout=5000)
    expect(page.locator("#key-form")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    watched.close()


def test_the_page_forbids_every_other_origin(live_server: LiveServer) -> None:
    answer = httpx.get(f"{live_server.url}/dashboard")

    assert answer.status_code == 200
    policy = answer.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert "script-src 'self'" in policy
    assert httpx.get(f"{live_server.url}/dashboard/other.js").status_code == 404
