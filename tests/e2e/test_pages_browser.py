"""The pages as a user sees them, in headless Chromium (Debian's, driven by Playwright), against the whole stack:
ingress, billing, usage-sync and the Polar emulator delivering signed webhooks to ingress. Every page is checked for
CSP violations in the browser's console; the usage chart is read from its data attributes, not its pixels."""
from __future__ import annotations

import csv
import io
import os
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from ingress.pages import fmt_time
from polar_billing_client import links
from polar_billing_client.client import BillingClient

from polar_emulator.config import PRO_PRODUCT_ID, TEAM_PRODUCT_ID, TOKENS_METER_ID
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
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"


def watch_csp(page) -> list[str]:
    """Every Content-Security-Policy violation the page causes: Chromium reports each in the console, and the
    `securitypolicyviolation` event (listened to by an init script, which the page's CSP does not govern)."""
    seen: list[str] = []
    page.on("console", lambda m: seen.append(m.text) if "Content Security Policy" in m.text else None)
    return seen


async def no_csp_violations(page, seen: list[str]) -> None:
    await page.wait_for_load_state("load")
    assert seen == [], seen


def save_for_docs(shot: str, name: str) -> None:
    """The README's screenshot, from a real run: written when missing or when UPDATE_SCREENSHOTS=1 (not on every
    run, so a test run leaves the work tree as it was)."""
    target = DOCS_SCREENSHOTS / name
    if os.environ.get("UPDATE_SCREENSHOTS") == "1" or not target.exists():
        shutil.copyfile(shot, target)


async def counted(client: BillingClient, user: str, tokens: int) -> None:
    async def done() -> bool:
        return (await client.status(user)).limits["tokens_per_month"].used == tokens

    await eventually(done, timeout=30)


async def becomes(client: BillingClient, user: str, plan: str) -> None:
    async def done() -> bool:
        return (await client.status(user)).plan == plan

    await eventually(done, timeout=30)


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
    violations = watch_csp(page)
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
    await no_csp_violations(page, violations)
    # The watch does see a violation: an inline style set from outside the page is refused and reported.
    await page.evaluate("document.body.setAttribute('style', 'color: red')")
    await eventually(lambda: _true(bool(violations)), timeout=5)
    await page.close()


async def _true(value: bool) -> bool:
    return value


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
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{ingress.url}/subscription/manage", data={"token": forged})
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



# --- usage: the chart, the notices, Team's breakdowns and CSV --------------------------------------------------------
# Free's basic models, one with characters HTML must escape; seven of them, so the chart shows five and "other".
MODELS = ["gpt-3.5-turbo", "claude-3-5-haiku-latest", "claude-3-haiku<&beta>", "openai/gpt-3.5-turbo-0125",
          "anthropic.claude-3-haiku", "claude-haiku-4-5", "gpt-3.5-turbo-16k"]


def days_this_month(today: date) -> list[date]:
    """A few past days of this month (fewer on its first days): the chart spans the month."""
    first = today.replace(day=1)
    return sorted({max(first, today - timedelta(days=k)) for k in (0, 3, 6, 9)})


async def track(client: BillingClient, user: str, spec: list[tuple[date, str, str, int]]) -> dict[str, int]:
    """Each (day, model, thread, tokens) as one usage event at noon UTC that day (or now, for today); the sums."""
    now = datetime.now(UTC)
    # Today's events a few seconds back, but never before its midnight: the chart and the limits are today's.
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)
    sums: dict[str, int] = defaultdict(int)
    for i, (day, model, thread, tokens) in enumerate(spec):
        at = max(midnight, now - timedelta(seconds=len(spec) - i)) if day == now.date() else datetime(
            day.year, day.month, day.day, 12, tzinfo=UTC)
        inp = tokens * 2 // 3
        cached = inp // 10
        await client.track_usage(user_id=user, thread_id=thread, model=model, input_tokens=inp,
                                 output_tokens=tokens - inp, cached_input_tokens=cached, occurred_at=at)
        for k, v in (("events", 1), ("input_tokens", inp), ("output_tokens", tokens - inp),
                     ("cached_input_tokens", cached), ("billable_tokens", tokens)):
            sums[k] += v
    return dict(sums)


async def bars(page) -> list[tuple[str, str | None, int, float]]:
    return [(d, m, int(t), float(h)) for d, m, t, h in await page.eval_on_selector_all(
        "#usage svg rect[data-day]",
        "els => els.map(e => [e.dataset.day, e.dataset.model ?? null, e.dataset.tokens, e.getAttribute('height')])")]


async def test_a_free_users_chart_has_every_days_tokens_by_model_top_five_and_other(stack) -> None:
    client, browser, ingress = stack["client"], stack["browser"], stack["ingress"]
    user = f"usr_{uuid.uuid4().hex[:8]}"
    today = datetime.now(UTC).date()
    days = days_this_month(today)
    spec = [(d, m, f"th-{(di + mi) % 4}", (7 - mi) * 400 + di * 10 + mi)
            # Each day leaves some models out; on a month's first day, its only one, every model is there.
            for di, d in enumerate(days) for mi, m in enumerate(MODELS) if len(days) == 1 or (di + mi) % 3 != 2]
    sums = await track(client, user, spec)
    await counted(client, user, sums["billable_tokens"])

    by_model: dict[str, int] = defaultdict(int)
    for _, m, _, t in spec:
        by_model[m] += t
    top = sorted(by_model, key=lambda m: -by_model[m])[:5]
    expected: dict[tuple[str, str], int] = defaultdict(int)
    for d, m, _, t in spec:
        expected[(d.isoformat(), m if m in top else "other")] += t
    by_thread: dict[str, int] = defaultdict(int)
    for _, _, th, t in spec:
        by_thread[th] += t

    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    csp = watch_csp(page)
    resp = await page.goto(client.status_page_url(user))
    assert resp.status == 200
    drawn = await bars(page)
    assert {(d, m): t for d, m, t, _ in drawn if m is not None} == dict(expected)
    # Every day of the month is there; a day without usage is a bar of height zero.
    month_days = {d for d, *_ in drawn}
    first = today.replace(day=1)
    assert min(month_days) == first.isoformat() and len(month_days) == ((first + timedelta(days=32)).replace(day=1)
                                                                       - first).days
    empty = [(d, h) for d, m, t, h in drawn if m is None]
    assert empty and all(h == 0 for _, h in empty) and not {d for d, _ in empty} & {d.isoformat() for d in days}
    # Heights follow the numbers: the tallest segment's ratio to the others is the tokens' ratio.
    segs = [(t, h) for _, m, t, h in drawn if m is not None]
    big_t, big_h = max(segs)
    assert all(abs(h - big_h * t / big_t) < 0.05 for t, h in segs)
    # The limit and the running total, in numbers.
    assert await page.get_attribute("#usage line.limit-line", "data-limit") == "100000"
    assert await page.get_attribute("#usage polyline.cumulative", "data-tokens") == str(sums["billable_tokens"])
    assert "claude-3-haiku<&beta>" in await page.text_content("#usage .legend")  # escaped, shown as written
    threads = await page.eval_on_selector_all("#top-threads tr[data-thread]",
                                              "rs => rs.map(r => [r.dataset.thread, +r.dataset.tokens])")
    assert dict(threads) == dict(by_thread)
    assert [t for _, t in threads] == sorted(by_thread.values(), reverse=True)
    assert await page.is_visible("#team-invite") and not await page.is_visible("#csv")
    await page.screenshot(path=str(SCREENSHOTS / "status-usage.png"), full_page=True)
    save_for_docs(str(SCREENSHOTS / "status-usage.png"), "status-usage.png")
    # The text alternative: every day's numbers in the table, the summary in <desc>.
    await page.click("#usage-data summary")
    rows = await page.eval_on_selector_all("#usage-data tbody tr", "rs => rs.map(r => r.dataset.day)")
    assert rows == [(first + timedelta(days=i)).isoformat() for i in range((today - first).days + 1)]
    assert f"{sums['billable_tokens']:,} tokens so far" in await page.text_content("#usage svg desc")
    await page.screenshot(path=str(SCREENSHOTS / "status-usage-table.png"), full_page=True)
    phone = await browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone_csp = watch_csp(phone)
    await phone.goto(client.status_page_url(user))
    box = await phone.locator("#usage svg").bounding_box()
    assert box is not None and box["width"] <= 390 and box["height"] > 150  # fits the phone, still a chart
    await phone.screenshot(path=str(SCREENSHOTS / "status-usage-phone.png"), full_page=True)
    await no_csp_violations(phone, phone_csp)
    await phone.close()
    # Free has no CSV.
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{ingress.url}/subscription/usage.csv", params={"token": links.sign(PAGE_SECRET, user)})
    assert r.status_code == 403 and "Team" in r.text
    await no_csp_violations(page, csp)
    await page.close()


async def test_the_notices_at_80_and_100_percent_of_messages_and_tokens(stack) -> None:
    client, browser = stack["client"], stack["browser"]
    user = f"usr_{uuid.uuid4().hex[:8]}"
    today = datetime.now(UTC).date()
    await track(client, user, [(today, "gpt-3.5-turbo", f"th-{i % 2}", 1000) for i in range(80)])
    await counted(client, user, 80_000)
    status = await client.status(user)
    assert status.limits["messages_per_day"].used == 80
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    csp = watch_csp(page)
    await page.goto(client.status_page_url(user))
    tokens, messages = page.locator("#notice-tokens_per_month"), page.locator("#notice-messages_per_day")
    assert await tokens.get_attribute("data-level") == "warn" and await messages.get_attribute("data-level") == "warn"
    text = await tokens.text_content()
    assert "Tokens this period: 80% used" in text and "20,000 of 100,000 left" in text
    assert f"Resets {fmt_time(status.limits['tokens_per_month'].resets_at)}" in text
    text = await messages.text_content()
    assert "Messages today: 80% used" in text and "20 of 100 left" in text
    assert f"Resets {fmt_time(status.limits['messages_per_day'].resets_at)}" in text
    assert not await page.is_visible("#notice-threads_per_month") and not await page.is_visible("#offer")
    await page.screenshot(path=str(SCREENSHOTS / "status-80-percent.png"), full_page=True)
    await no_csp_violations(page, csp)

    await track(client, user, [(today, "gpt-3.5-turbo", f"th-{i % 2}", 1000) for i in range(20)])
    await counted(client, user, 100_000)
    await page.goto(client.status_page_url(user))
    assert await tokens.get_attribute("data-level") == "blocked"
    assert await messages.get_attribute("data-level") == "blocked"
    text = await tokens.text_content()
    assert "limit reached" in text and "new messages are blocked until" in text and "Pro: 1,000,000 tokens" in text
    assert "You have sent all 100 messages for today" in await messages.text_content()
    assert await page.is_visible("#offer-upgrade-pro") and await page.is_visible("#offer-upgrade-team")
    await page.screenshot(path=str(SCREENSHOTS / "status-blocked.png"), full_page=True)
    await no_csp_violations(page, csp)
    # The offer is the upgrade form: it goes to the checkout like the page's own button.
    await page.click("#offer-upgrade-team")
    await page.wait_for_url(f"{stack['emulator'].url}/frontend/checkout/**")
    await page.close()


async def test_pro_past_its_included_million_sees_the_overage_and_what_it_costs(stack) -> None:
    client, browser, emulator = stack["client"], stack["browser"], stack["emulator"]
    user = f"usr_{uuid.uuid4().hex[:8]}"
    admin(emulator, "POST", "simulate/purchase", json={"external_customer_id": user, "product_id": PRO_PRODUCT_ID})
    await becomes(client, user, "pro")
    today = datetime.now(UTC).date()
    await track(client, user, [(today, "gpt-4o", "th-1", 600_000), (today, "gpt-4o", "th-2", 634_567)])
    await counted(client, user, 1_234_567)
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    csp = watch_csp(page)
    await page.goto(client.status_page_url(user))
    notice = page.locator("#notice-tokens_per_month")
    assert await notice.get_attribute("data-level") == "overage"
    text = await notice.text_content()
    assert "234,567 tokens past the 1,000,000 included, billed at $0.01 per 1K tokens: $2.35 so far" in text
    assert "Nothing is blocked" in text and not await page.is_visible("#offer")
    assert await page.get_attribute("#usage line.limit-line", "data-limit") == "1000000"
    await page.screenshot(path=str(SCREENSHOTS / "status-pro-overage.png"), full_page=True)
    await no_csp_violations(page, csp)
    await page.close()


async def test_a_team_user_picks_a_period_and_downloads_its_csv_whose_totals_are_what_was_tracked(stack) -> None:
    client, browser, emulator, ingress = stack["client"], stack["browser"], stack["emulator"], stack["ingress"]
    user = f"usr_{uuid.uuid4().hex[:8]}"
    admin(emulator, "POST", "simulate/purchase", json={"external_customer_id": user, "product_id": TEAM_PRODUCT_ID})
    await becomes(client, user, "team")
    today = datetime.now(UTC).date()
    days = days_this_month(today)
    spec = [(d, m, f"th-{(di * 3 + mi) % 5}", 500 + 37 * di + 11 * mi)
            for di, d in enumerate(days) for mi, m in enumerate(["gpt-4o", "claude-sonnet-4", "o3-mini", "my-model"])]
    sums = await track(client, user, spec)

    async def all_recorded() -> bool:  # days before the purchase: the report has them, whichever period counts them
        report = await client.usage(user, from_=days[0], to=today + timedelta(days=1))
        return report.totals.billable_tokens == sums["billable_tokens"]

    await eventually(all_recorded, timeout=30)
    page = await browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    csp = watch_csp(page)
    await page.goto(client.status_page_url(user))
    assert await page.text_content("#plan") == "Team"
    assert await page.is_visible("#csv") and not await page.is_visible("#team-invite")
    # The period picker: a plain GET form.
    first, end = today.replace(day=1), today + timedelta(days=1)
    await page.click(".period summary")
    await page.fill("input[name=from]", first.isoformat())
    await page.fill("input[name=to]", end.isoformat())
    await page.click("#period-show")
    await page.wait_for_url(f"**/subscription/status?*from={first.isoformat()}*")
    by_model = await page.eval_on_selector_all("#by-model tbody tr[data-model]",
                                               "rs => rs.map(r => [r.dataset.model, +r.dataset.tokens])")
    want: dict[str, int] = defaultdict(int)
    for _, m, _, t in spec:
        want[m] += t
    assert dict(by_model) == dict(want)
    assert await page.get_attribute("#by-model-total", "data-tokens") == str(sums["billable_tokens"])
    threads = await page.eval_on_selector_all("#top-threads tr[data-thread]",
                                              "rs => rs.map(r => [r.dataset.thread, +r.dataset.tokens])")
    assert sum(t for _, t in threads) == sums["billable_tokens"]
    await page.screenshot(path=str(SCREENSHOTS / "status-team.png"), full_page=True)
    async with page.expect_download() as dl:
        await page.click("#csv")
    download = await dl.value
    last = end - timedelta(days=1)
    assert download.suggested_filename == f"usage-{first.isoformat()}-to-{last.isoformat()}.csv"
    rows = list(csv.DictReader(io.StringIO(Path(await download.path()).read_text())))
    for column in ("events", "input_tokens", "output_tokens", "cached_input_tokens", "billable_tokens"):
        assert sum(int(r[column]) for r in rows) == sums[column], column
    assert {(r["day"], r["model"], r["thread_id"]) for r in rows} == {(d.isoformat(), m, th) for d, m, th, _ in spec}
    assert all(r["cost_usd"] for r in rows if r["model"] != "my-model")  # priced models have a cost
    assert all(r["cost_usd"] == "" for r in rows if r["model"] == "my-model")  # an unknown model has none
    await no_csp_violations(page, csp)
    # The previous period is a plain link; a bad date is a clear 400.
    await page.click("#period-prev")
    assert "Usage" in await page.text_content("#usage-heading")
    resp = await page.goto(f"{ingress.url}/subscription/status?token={links.sign(PAGE_SECRET, user)}"
                           "&from=2026-13-01&to=2026-12-01")
    assert resp.status == 400 and "YYYY-MM-DD" in await page.text_content("#message")
    await page.screenshot(path=str(SCREENSHOTS / "status-bad-dates.png"))
    await no_csp_violations(page, csp)
    await page.close()
