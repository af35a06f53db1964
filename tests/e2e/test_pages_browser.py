"""The pages as a user sees them, in headless Chromium (Debian's, driven by Playwright), against the whole stack:
ingress, billing, usage-sync and the Polar emulator delivering signed webhooks to ingress."""
from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from polar_emulator.config import PRO_PRODUCT_ID, TEAM_PRODUCT_ID, TOKENS_METER_ID
from polar_billing_client import links
from polar_billing_client.client import BillingClient
from shared.db.migrate import migrate
from tests.conftest import ROOT, Servers, drop_database, new_database
from tests.e2e.procs import base_env, start_service
from tests.e2e.stack import SECRET, eventually, reset_webhook_consumer
from tests.e2e.usage_stack import make_events, publish, reset_usage_consumer
from tests.support.emulator import TOKEN, admin, start_emulator

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")]
PAGE_SECRET = "status-page-secret-for-tests"
SCREENSHOTS = ROOT / "test-output" / "pages"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(servers: Servers, tmp_path_factory) -> AsyncIterator[dict]:
    await reset_webhook_consumer(servers.nats_url)
    await reset_usage_consumer(servers.nats_url)
    db_url = await new_database(servers)
    await migrate(db_url)
    d = tmp_path_factory.mktemp("pages")
    from dev.embedded import free_port

    ingress_port = free_port()
    emulator = start_emulator(d, webhook_secret=SECRET, webhook_url=f"http://127.0.0.1:{ingress_port}/webhooks/polar")
    env = base_env(NATS_URL=servers.nats_url, DATABASE_URL=db_url, POLAR_WEBHOOK_SECRET=SECRET,
                   POLAR_ACCESS_TOKEN=TOKEN, POLAR_SERVER=emulator.url, POLAR_PRO_PRODUCT_ID=PRO_PRODUCT_ID,
                   POLAR_TEAM_PRODUCT_ID=TEAM_PRODUCT_ID, POLAR_TOKENS_METER_ID=TOKENS_METER_ID,
                   STATUS_PAGE_SECRET=PAGE_SECRET, PUBLIC_BASE_URL=f"http://127.0.0.1:{ingress_port}",
                   POLAR_FLUSH_INTERVAL_SECONDS="0.2")
    procs = [start_service("ingress", env, d, port=ingress_port),
             start_service("billing", env, d), start_service("usage-sync", env, d)]
    for p in procs:
        p.wait_ready()
    client = await BillingClient.connect(servers.nats_url, public_base_url=f"http://127.0.0.1:{ingress_port}",
                                         status_page_secret=PAGE_SECRET)
    from playwright.async_api import async_playwright

    pw = await async_playwright().start()
    browser = await pw.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"])
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield {"client": client, "browser": browser, "emulator": emulator, "ingress": procs[0], "procs": procs}
    await browser.close()
    await pw.stop()
    await client.close()
    for p in procs:
        assert p.stop() == 0
    for p in procs:
        text = p.log.read_text()
        assert "customer_session_token" not in text and PAGE_SECRET not in text
    emulator.stop_or_kill()
    await drop_database(servers, db_url)


async def test_a_free_users_page_shows_three_usage_bars_with_the_right_numbers(stack) -> None:
    client, browser = stack["client"], stack["browser"]
    user = f"usr_{uuid.uuid4().hex[:8]}"
    events = make_events(7, [user], tag=user)
    for i, e in enumerate(events):
        e.input_tokens, e.output_tokens, e.custom_key, e.thread_id = 1000 + i, 0, False, f"th{i % 3}"
    await publish(client, events)
    tokens = sum(e.input_tokens for e in events)

    async def counted() -> bool:
        return (await client.status(user)).limits["messages_per_day"].used == 7

    await eventually(counted)
    page = await browser.new_page()
    resp = await page.goto(client.status_page_url(user))
    assert resp.status == 200
    assert await page.text_content("#plan") == "Free"
    assert f"{tokens:,} / 100,000" in await page.text_content("#tokens_per_month")
    assert "3 / 50" in await page.text_content("#threads_per_month")
    assert "7 / 100 (7%)" in await page.text_content("#messages_per_day")
    assert await page.is_visible("#upgrade-pro") and await page.is_visible("#upgrade-team")
    assert not await page.is_visible("#manage")
    csp = resp.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and resp.headers["x-frame-options"] == "DENY"
    await page.screenshot(path=str(SCREENSHOTS / "status-free.png"), full_page=True)
    await page.close()


async def test_upgrade_pay_and_the_success_page_turns_to_welcome_by_itself(stack) -> None:
    client, browser, emulator = stack["client"], stack["browser"], stack["emulator"]
    user = f"usr_{uuid.uuid4().hex[:8]}"
    page = await browser.new_page()
    await page.goto(client.status_page_url(user))
    await page.click("#upgrade-pro")
    await page.wait_for_url(f"{emulator.url}/frontend/checkout/**")
    assert await page.text_content("#customer") == user  # the checkout carries the user's external id
    await page.screenshot(path=str(SCREENSHOTS / "checkout.png"))
    # Hold the webhooks a moment, so the page is seen confirming before it confirms.
    admin(emulator, "POST", "delivery", json={"url": "http://127.0.0.1:9/held"})
    await page.click("#pay")
    await page.wait_for_url("**/subscription/success?checkout_id=*")
    assert await page.get_attribute("#state", "data-state") == "confirming"
    await page.screenshot(path=str(SCREENSHOTS / "success-confirming.png"))
    ingress_url = stack["ingress"].url
    admin(emulator, "POST", "delivery", json={"url": f"{ingress_url}/webhooks/polar"})
    # Polar retries what failed: the held webhooks are re-sent to ingress by the emulator's retry loop.
    await page.wait_for_selector("#state[data-state=confirmed]", timeout=60_000)
    assert "welcome to Pro" in await page.text_content("#state")
    await page.screenshot(path=str(SCREENSHOTS / "success-confirmed.png"))

    await page.goto(client.status_page_url(user))
    assert await page.text_content("#plan") == "Pro"
    assert not await page.is_visible("#upgrade-pro")
    await page.screenshot(path=str(SCREENSHOTS / "status-pro.png"), full_page=True)
    await page.click("#manage")
    await page.wait_for_url(f"{emulator.url}/frontend/**/portal?customer_session_token=*")
    assert "customer portal" in (await page.text_content("h1")).lower()
    await page.close()


async def test_forged_and_expired_tokens_get_a_403_that_names_no_one(stack) -> None:
    browser, ingress = stack["browser"], stack["ingress"]
    page = await browser.new_page()
    forged = links.sign("not-the-secret", "usr_victim")
    expired = links.sign(PAGE_SECRET, "usr_victim", ttl=-1)
    for token in (forged, expired, "garbage", ""):
        resp = await page.goto(f"{ingress.url}/subscription/status?token={token}")
        assert resp.status == 403
        assert "usr_victim" not in await page.content()
    await page.screenshot(path=str(SCREENSHOTS / "forbidden.png"))
    r = httpx.post(f"{ingress.url}/subscription/manage", data={"token": forged})
    assert r.status_code == 403
    resp = await page.goto(f"{ingress.url}/subscription/cancel")
    assert resp.status == 200 and "Nothing was charged" in await page.content()
    await page.screenshot(path=str(SCREENSHOTS / "cancel.png"))
    await page.close()


async def test_a_checkout_never_confirmed_says_it_is_still_processing_after_two_minutes(stack) -> None:
    ingress, browser = stack["ingress"], stack["browser"]
    page = await browser.new_page()
    started = int(time.time()) - 121
    resp = await page.goto(f"{ingress.url}/subscription/success?checkout_id=never-paid&started={started}")
    assert resp.status == 200 and await page.get_attribute("#state", "data-state") == "slow"
    await page.close()

