"""The status page's usage chart (ingress.charts), its limit notices and Team's periods and CSV (ingress.pages): pure
functions, and the pages against a fake billing that answers `status` and `usage` the way the contract says."""
from __future__ import annotations

import csv
import io
import itertools
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from ingress import charts, pages
from ingress.settings import IngressSettings
from polar_billing_client import links
from polar_billing_client.client import BillingError, BillingUnavailable
from polar_billing_client.contracts import (
    Credits,
    ErrorBody,
    LimitState,
    StatusReply,
    UsageQuery,
    UsageReport,
    UsageRow,
    UsageSums,
)
from starlette.applications import Starlette
from starlette.testclient import TestClient

from shared.plans import FREE, PRO, TEAM

NOV_1, DEC_1 = date(2026, 11, 1), date(2026, 12, 1)


def row(day: date | None, model: str | None, tokens: int) -> UsageRow:
    return UsageRow(day=day, model=model, events=1 if tokens else 0, input_tokens=tokens, output_tokens=0,
                    cached_input_tokens=0, billable_tokens=tokens, cost_usd=None, unpriced_events=0)


def figure(html: str) -> ET.Element:
    """The chart's markup is well-formed XML (no entities but XML's own), so ElementTree reads it."""
    return ET.fromstring(html)


def segs(fig: ET.Element) -> list[ET.Element]:
    return fig.findall(".//rect[@data-model]")


def f(el: ET.Element, name: str) -> float:
    return float(el.get(name, "nan"))


def panel(fig: ET.Element, cls: str) -> ET.Element:
    found = [g for g in fig.iter("g") if cls in (g.get("class") or "").split()]
    assert len(found) == 1
    return found[0]


# --- the chart ------------------------------------------------------------------------------------------------
def test_bar_heights_are_proportional_to_the_tokens_and_the_data_attributes_carry_the_numbers() -> None:
    rows = [row(date(2026, 11, 2), "gpt-4o", 1000), row(date(2026, 11, 3), "gpt-4o", 3000),
            row(date(2026, 11, 4), "gpt-4o", 250)]
    fig = figure(charts.usage_chart(rows, NOV_1, DEC_1, today=date(2026, 11, 10)))
    bars = {b.get("data-day"): b for b in segs(fig)}
    assert {d: int(b.get("data-tokens", "")) for d, b in bars.items()} == {
        "2026-11-02": 1000, "2026-11-03": 3000, "2026-11-04": 250}
    daily = panel(fig, "daily-panel")
    scale = (f(daily, "data-baseline") - f(daily, "data-top")) / f(daily, "data-max")
    for b in bars.values():
        assert f(b, "height") == pytest.approx(int(b.get("data-tokens", "")) * scale, abs=0.011)
        assert f(b, "y") + f(b, "height") == pytest.approx(f(daily, "data-baseline"), abs=0.011)  # on the axis
    assert f(bars["2026-11-03"], "height") / f(bars["2026-11-02"], "height") == pytest.approx(3, rel=1e-3)
    assert int(daily.get("data-max", "")) >= 3000  # the tallest bar fits


def test_the_stack_puts_the_largest_model_at_the_bottom_and_other_on_top() -> None:
    d = date(2026, 11, 5)
    rows = [row(d, "other", 100), row(d, "small", 200), row(d, "big", 5000), row(date(2026, 11, 6), "small", 900),
            row(d, "mid", 1500)]
    data = charts.chart_data(rows, NOV_1, DEC_1)
    assert [s.name for s in data.series] == ["big", "mid", "small", "other"]  # the period's totals: 5000, 1500, 1100
    fig = figure(charts.render_chart(data))
    day = [b for b in segs(fig) if b.get("data-day") == d.isoformat()]
    assert [b.get("data-model") for b in day] == ["big", "mid", "small", "other"]
    for lower, upper in itertools.pairwise(day):  # each sits on the one below it
        assert f(upper, "y") + f(upper, "height") == pytest.approx(f(lower, "y"), abs=0.011)
    assert [b.get("class") for b in day] == ["seg s0", "seg s1", "seg s2", "seg so"]
    legend = ["".join(li.itertext()).strip() for li in fig.iter("li")]
    assert legend == ["big 5,000", "mid 1,500", "small 1,100", "Other models 100"]


def test_models_past_the_top_five_are_folded_into_other() -> None:
    d = date(2026, 11, 5)
    rows = [row(d, f"m{i}", 1000 * (10 - i)) for i in range(8)] + [row(d, "other", 7)]
    data = charts.chart_data(rows, NOV_1, DEC_1)
    assert [s.name for s in data.series] == ["m0", "m1", "m2", "m3", "m4", "other"]
    assert data.series[-1].total == 5000 + 4000 + 3000 + 7  # m5, m6, m7 and billing's own "other"
    fig = figure(charts.render_chart(data))
    assert sum(int(b.get("data-tokens", "")) for b in segs(fig)) == sum(r.billable_tokens for r in rows)


def test_every_day_of_the_period_is_there_and_an_empty_day_is_a_bar_of_height_zero() -> None:
    rows = [row(date(2026, 11, 2), "gpt-4o", 1000), row(date(2026, 11, 3), None, 0)]  # billing's zero row
    fig = figure(charts.usage_chart(rows, NOV_1, DEC_1, today=date(2026, 11, 20)))
    days = [g for g in fig.iter("g") if "day" in (g.get("class") or "").split()]
    assert [g.get("data-day") for g in days] == [(NOV_1 + timedelta(days=i)).isoformat() for i in range(30)]
    empty = fig.findall(".//rect[@data-day='2026-11-03']")
    assert len(empty) == 1 and empty[0].get("height") == "0" and empty[0].get("data-tokens") == "0"
    assert empty[0].get("data-model") is None
    # Days after today: drawn (the axis is the whole period), marked future, left out of the table.
    assert all("future" in (g.get("class") or "") for g in days[20:]) and days[19].get("class") == "day"
    table_days = [tr.get("data-day") for tr in fig.iter("tr") if tr.get("data-day")]
    assert table_days == [(NOV_1 + timedelta(days=i)).isoformat() for i in range(20)]
    assert days[1].get("data-cumulative") == "1000" and days[25].get("data-cumulative") is None


def test_the_limit_line_sits_at_the_limit_on_the_running_totals_scale() -> None:
    rows = [row(date(2026, 11, 1 + i), "gpt-4o", 5000) for i in range(10)]
    fig = figure(charts.usage_chart(rows, NOV_1, DEC_1, limit=100_000, today=date(2026, 11, 10)))
    total = panel(fig, "total-panel")
    top, base, scale_max = f(total, "data-top"), f(total, "data-baseline"), f(total, "data-max")
    assert scale_max >= 110_000  # headroom above the limit
    line = fig.findall(".//line[@class='limit-line']")
    assert len(line) == 1 and line[0].get("data-limit") == "100000"
    y = base - (base - top) * 100_000 / scale_max
    assert f(line[0], "y1") == pytest.approx(y, abs=0.011) and line[0].get("y1") == line[0].get("y2")
    # The running total: its last point is 50,000 on the same scale, below the line.
    cumulative = fig.findall(".//polyline[@class='cumulative']")[0]
    assert cumulative.get("data-tokens") == "50000"
    last_y = float(cumulative.get("points", "").split()[-1].split(",")[1])
    assert last_y == pytest.approx(base - (base - top) * 50_000 / scale_max, abs=0.011) and last_y > y
    assert len(cumulative.get("points", "").split()) == 10  # up to today, not into the future
    # Its label is away from the running total: on the right while the period is young, on the left later.
    label = fig.findall(".//text[@class='limit-label']")[0]
    assert label.text == "Limit 100K" and label.get("text-anchor") == "end"
    later = figure(charts.usage_chart(rows, NOV_1, DEC_1, limit=100_000, today=date(2026, 11, 25)))
    assert later.findall(".//text[@class='limit-label']")[0].get("text-anchor") is None


def test_no_limit_no_line_and_past_the_limit_the_scale_grows() -> None:
    rows = [row(date(2026, 11, 2), "gpt-4o", 150_000)]
    assert "limit-line" not in charts.usage_chart(rows, NOV_1, DEC_1)
    fig = figure(charts.usage_chart(rows, NOV_1, DEC_1, limit=100_000))
    assert f(panel(fig, "total-panel"), "data-max") >= 150_000


def test_model_names_are_escaped_everywhere() -> None:
    evil = '<script>alert("x")</script> & co'
    html = charts.usage_chart([row(date(2026, 11, 2), evil, 10)], NOV_1, DEC_1)
    assert "<script" not in html and "& co" not in html
    fig = figure(html)  # still well-formed
    assert segs(fig)[0].get("data-model") == evil
    assert evil in "".join(fig.itertext())  # in the legend, table and tooltip, as text


def test_the_text_alternative_has_the_numbers_and_the_markup_no_style() -> None:
    rows = [row(date(2026, 11, 2), "gpt-4o", 3000), row(date(2026, 11, 9), "claude-3-5-haiku", 1234)]
    html = charts.usage_chart(rows, NOV_1, DEC_1, limit=100_000, today=date(2026, 11, 10))
    fig = figure(html)
    svg = fig.find("svg")
    assert svg is not None and svg.get("role") == "img" and svg.get("width") == "100%"
    assert svg.get("viewBox", "").startswith("0 0 ")
    ids = (svg.get("aria-labelledby") or "").split()
    assert [svg.find(t) is not None for t in ("title", "desc")] == [True, True]
    assert {e.get("id") for e in svg if e.tag in ("title", "desc")} == set(ids)
    desc = svg.findtext("desc") or ""
    assert "4,234 tokens so far" in desc and "100,000" in desc and "gpt-4o 3,000" in desc and "Nov 2" in desc
    assert fig.find(".//details/summary") is not None
    foot = [c.text for c in fig.findall(".//tfoot/tr/*")]
    assert foot == ["Period", "3,000", "1,234", "4,234", None]
    assert not re.search(r"\sstyle=|<style|<script|\son\w+=", html)  # the CSP allows none of them


@pytest.mark.parametrize(("value", "ceiling"), [(0, 10), (7, 10), (11, 12), (101, 120), (3000, 3000), (3001, 4000),
                                                (110_000, 120_000), (1_100_000, 1_200_000)])
def test_nice_ceilings(value: int, ceiling: int) -> None:
    assert charts.nice_ceiling(value) == ceiling


def test_labels() -> None:
    assert [charts.compact(n) for n in (0, 950, 1200, 120_000, 1_500_000, 2_000_000)] == [
        "0", "950", "1.2K", "120K", "1.5M", "2M"]
    assert charts.range_label(NOV_1, DEC_1) == "Nov 1 – Nov 30, 2026"
    assert charts.range_label(date(2026, 12, 15), date(2027, 1, 15)) == "Dec 15, 2026 – Jan 14, 2027"


# --- the notices ----------------------------------------------------------------------------------------------
RESET = datetime(2026, 12, 1, tzinfo=UTC)
TOMORROW = datetime(2026, 11, 11, tzinfo=UTC)


def limits(tokens: int = 0, threads: int = 0, messages: int = 0, plan: Any = FREE) -> dict[str, LimitState]:
    return {"tokens_per_month": LimitState(used=tokens, limit=plan.limits["tokens_per_month"], resets_at=RESET),
            "threads_per_month": LimitState(used=threads, limit=plan.limits["threads_per_month"], resets_at=RESET),
            "messages_per_day": LimitState(used=messages, limit=plan.limits["messages_per_day"], resets_at=TOMORROW)}


def test_below_80_percent_there_is_nothing_to_say() -> None:
    assert pages.limit_notices(FREE, limits(tokens=79_999, threads=39, messages=79)) == []


def test_at_80_percent_a_notice_names_the_limit_what_is_left_and_when_it_resets() -> None:
    notices = pages.limit_notices(FREE, limits(tokens=80_000, threads=40, messages=85))
    assert [(n.key, n.level) for n in notices] == [
        ("tokens_per_month", "warn"), ("threads_per_month", "warn"), ("messages_per_day", "warn")]
    tokens, threads, messages = notices
    assert tokens.title == "Tokens this period: 80% used"
    assert tokens.body == "20,000 of 100,000 left. Resets Dec 1, 2026 00:00 UTC."
    assert threads.body.startswith("10 of 50 left")
    assert messages.title == "Messages today: 85% used" and messages.body == "15 of 100 left. Resets Nov 11, 2026 00:00 UTC."


def test_at_100_percent_the_notice_says_what_is_blocked_and_which_plans_lift_it() -> None:
    notices = pages.limit_notices(FREE, limits(tokens=100_000, threads=50, messages=100))
    assert [(n.key, n.level) for n in notices] == [
        ("tokens_per_month", "blocked"), ("threads_per_month", "blocked"), ("messages_per_day", "blocked")]
    tokens, threads, messages = notices
    assert "new messages are blocked until Dec 1, 2026 00:00 UTC" in tokens.body
    assert "More with Pro: 1,000,000 tokens a month, then $0.01 per 1K; Team: no limit, $0.01 per 1K tokens." \
        in tokens.body
    assert "More with Pro: 1,000 messages a day; Team: no limit." in messages.body
    assert "keep writing in them, but new threads are blocked" in threads.body
    assert "new messages are blocked until Nov 11, 2026 00:00 UTC" in messages.body
    assert [p.name.value for p in tokens.lifted_by] == ["pro", "team"]
    pro_messages = pages.limit_notices(PRO, limits(messages=1000, plan=PRO))
    assert [p.name.value for p in pro_messages[0].lifted_by] == ["team"]


def test_pro_past_the_included_million_is_told_the_overage_and_its_price_not_blocked() -> None:
    (n,) = pages.limit_notices(PRO, limits(tokens=1_234_567, plan=PRO))
    assert n.level == "overage" and n.lifted_by == ()
    assert n.body.startswith("234,567 tokens past the 1,000,000 included, billed at $0.01 per 1K tokens: $2.35 so far.")
    assert "Nothing is blocked" in n.body
    (at,) = pages.limit_notices(PRO, limits(tokens=1_000_000, plan=PRO))
    assert at.level == "overage" and at.body.startswith("All 1,000,000 included tokens are used")
    (warn,) = pages.limit_notices(PRO, limits(tokens=900_000, plan=PRO))
    assert warn.body == ("100,000 of the 1,000,000 included tokens left; after that, tokens are billed at $0.01 per "
                         "1K tokens. Resets Dec 1, 2026 00:00 UTC.")
    assert pages.overage_usd(1_000, 1) == Decimal("0.01") and pages.overage_usd(1_500_000, 1) == Decimal("15.00")


def test_team_has_no_limits_and_no_notices() -> None:
    assert pages.limit_notices(TEAM, limits(tokens=10**9, messages=10**6, plan=TEAM)) == []


# --- Team's periods -------------------------------------------------------------------------------------------
TODAY = date(2026, 11, 30)


def test_a_period_is_two_days_or_none() -> None:
    assert pages.parse_period(None, None, TODAY) is None
    assert pages.parse_period("2026-10-01", "2026-11-01", TODAY) == (date(2026, 10, 1), date(2026, 11, 1))


@pytest.mark.parametrize(("from_", "to", "says"), [
    ("2026-10-01", None, "both"), ("2026-10-1", "2026-11-01", "YYYY-MM-DD"), ("20261001", "2026-11-01", "YYYY-MM-DD"),
    ("2026-02-30", "2026-03-05", "not a real date"), ("2026-11-01", "2026-11-01", "before"), ("2024-01-01", "2026-01-01", "400"),
    ("2027-01-01", "2027-02-01", "not started"), ("<b>", "x", "YYYY-MM-DD"),
])
def test_bad_periods_are_refused_with_a_reason(from_: str, to: str | None, says: str) -> None:
    with pytest.raises(pages.BadPeriod, match=says):
        pages.parse_period(from_, to, TODAY)


def test_months_step_back_and_forth_clamped_to_the_months_end() -> None:
    assert pages.add_months(date(2026, 11, 1), -1) == date(2026, 10, 1)
    assert pages.add_months(date(2026, 1, 15), -1) == date(2025, 12, 15)
    assert pages.add_months(date(2026, 3, 31), -1) == date(2026, 2, 28)
    assert pages.add_months(date(2026, 12, 31), 2) == date(2027, 2, 28)


# --- the pages, against a fake billing ----------------------------------------------------------------------------
SECRET = "unit-test-page-secret"


@dataclass
class Event:
    day: date
    model: str
    thread: str
    tokens: int
    cost: float | None = None


class FakeBilling:
    """billing.rpc.status and billing.rpc.usage as the contract describes them, over a list of events."""

    def __init__(self, plan: str, events: Sequence[Event], used: dict[str, int] | None = None,
                 period: tuple[date, date] = (NOV_1, DEC_1), fail: Exception | None = None) -> None:
        self.plan, self.events, self.used, self.period, self.fail = plan, list(events), used or {}, period, fail
        self.queries: list[UsageQuery] = []

    async def status(self, user_id: str) -> StatusReply:
        from shared.plans import PLANS, PlanName

        p = PLANS[PlanName(self.plan)]
        state = {k: LimitState(used=self.used.get(k, 0), limit=p.limits[k], resets_at=RESET) for k in
                 ("tokens_per_month", "threads_per_month", "messages_per_day")}
        return StatusReply(plan=self.plan, status=None if self.plan == "free" else "active",
                           current_period_start=None, current_period_end=None, cancel_at_period_end=False,
                           limits=state, credits=Credits(granted=0, used=0, balance=0), customer_id=None)

    async def usage(self, user_id: str, *, from_: date | None = None, to: date | None = None,
                    group_by: Sequence[str] = (), limit: int | None = None) -> UsageReport:
        q = UsageQuery(user_id=user_id, from_=from_, to=to, group_by=list(group_by), limit=limit)
        self.queries.append(q)
        if self.fail is not None:
            raise self.fail
        start, end = q.from_ or self.period[0], q.to or self.period[1]
        events = [e for e in self.events if start <= e.day < end]
        keep: dict[str, set[str]] = {}
        for dim, attr in (("model", "model"), ("thread", "thread")):
            totals: dict[str, int] = {}
            for e in events:
                totals[getattr(e, attr)] = totals.get(getattr(e, attr), 0) + e.tokens
            ranked = sorted(totals, key=lambda k: (-totals[k], k))
            keep[dim] = set(ranked[:limit] if limit else ranked)
        def key_of(e: Event, g: str) -> Any:
            if g == "day":
                return e.day
            value = e.model if g == "model" else e.thread
            return value if value in keep[g] else "other"

        groups: dict[tuple, list[Event]] = {}
        for e in events:
            groups.setdefault(tuple(key_of(e, g) for g in q.group_by), []).append(e)
        if "day" in q.group_by:  # every day of the range, zeros included
            at = q.group_by.index("day")
            present = {k[at] for k in groups}
            for i in range((end - start).days):
                d = start + timedelta(days=i)
                if d not in present:
                    groups[tuple(d if g == "day" else None for g in q.group_by)] = []

        def sums(es: list[Event]) -> dict[str, Any]:
            costs = [e.cost for e in es if e.cost is not None]
            return {"events": len(es), "input_tokens": sum(e.tokens for e in es), "output_tokens": 0,
                    "cached_input_tokens": 0, "billable_tokens": sum(e.tokens for e in es),
                    "cost_usd": sum(costs) if costs else None,
                    "unpriced_events": sum(1 for e in es if e.cost is None)}

        rows = []
        for key, es in sorted(groups.items(), key=lambda kv: [str(k) for k in kv[0]]):
            names = {"day": "day", "model": "model", "thread": "thread_id"}
            rows.append(UsageRow(**sums(es), **{names[g]: k for g, k in zip(q.group_by, key, strict=True)}))
        return UsageReport(from_=start, to=end, totals=UsageSums(**sums(events)), rows=rows)


def app_for(billing: Any) -> TestClient:
    app = Starlette(routes=pages.ROUTES)
    app.add_middleware(pages.SecurityHeaders, frame_ancestors="'none'")
    settings = IngressSettings(nats_url="nats://x:4222", database_url="postgresql://x/y",
                               polar_webhook_secret="whsec_x", status_page_secret=SECRET)
    app.state.rt = SimpleNamespace(settings=settings, billing=billing)
    return TestClient(app)


TOKEN = links.sign(SECRET, "usr_1")
EVENTS = [Event(date(2026, 11, 2), "gpt-4o", "th-a", 3000, 0.03), Event(date(2026, 11, 2), "claude-3-5-haiku",
                                                                          "th-b", 1000, 0.001),
          Event(date(2026, 11, 5), "gpt-4o", "=cmd|' /C calc'!A0", 500, None),
          Event(date(2026, 10, 20), "gpt-4o", "th-old", 7000, 0.07)]


def test_the_status_page_shows_this_periods_chart_top_threads_and_an_invitation_to_team() -> None:
    billing = FakeBilling("free", EVENTS, used={"tokens_per_month": 4500, "messages_per_day": 80})
    resp = app_for(billing).get("/subscription/status", params={"token": TOKEN, "from": "2026-10-01",
                                                                 "to": "2026-11-01"})
    assert resp.status_code == 200
    html = resp.text
    assert 'data-model="gpt-4o" data-tokens="3000"' in html and 'data-day="2026-11-05"' in html
    assert 'data-limit="100000"' in html  # the plan's limit, on the current period's chart
    assert 'id="team-invite"' in html and 'id="csv"' not in html and 'id="period-form"' not in html
    assert 'id="notice-messages_per_day" data-limit="messages_per_day" data-level="warn"' in html
    assert re.search(r'<tr data-thread="th-a" data-tokens="3000" data-events="1">', html)
    assert "Nov 1 – Nov 30, 2026" in html
    # Free sees the current period whatever the link says; billing is asked for it (no from / to).
    assert {(q.from_, q.to) for q in billing.queries} == {(None, None)}
    assert [q.group_by for q in billing.queries] == [["day", "model"], ["thread"]]
    assert [q.limit for q in billing.queries] == [5, 10]
    assert not re.search(r"\sstyle=|<style|<script", html)


def test_a_blocked_free_user_gets_the_upgrade_offer() -> None:
    billing = FakeBilling("free", EVENTS, used={"tokens_per_month": 100_000})
    html = app_for(billing).get("/subscription/status", params={"token": TOKEN}).text
    assert 'data-level="blocked"' in html and 'id="offer-upgrade-pro"' in html and 'id="offer-upgrade-team"' in html
    assert 'id="upgrade-pro"' in html  # the page's own upgrade buttons are still there, once


def test_a_blocked_pro_user_is_sent_to_manage_billing_not_to_a_second_checkout() -> None:
    billing = FakeBilling("pro", EVENTS, used={"messages_per_day": 1000})
    html = app_for(billing).get("/subscription/status", params={"token": TOKEN}).text
    assert 'id="notice-messages_per_day" data-limit="messages_per_day" data-level="blocked"' in html
    assert 'id="offer-manage"' in html and "Team lifts this limit" in html and 'id="offer-upgrade-team"' not in html


def test_team_picks_a_past_period_and_sees_models_and_threads() -> None:
    billing = FakeBilling("team", EVENTS)
    resp = app_for(billing).get("/subscription/status", params={"token": TOKEN, "from": "2026-10-01",
                                                                 "to": "2026-11-01"})
    assert resp.status_code == 200
    html = resp.text
    assert {(q.from_, q.to) for q in billing.queries} == {(date(2026, 10, 1), date(2026, 11, 1))}
    assert 'id="by-model"' in html and '<tr data-model="gpt-4o" data-tokens="7000"' in html
    assert "limit-line" not in html  # Team has no token limit
    assert "Oct 1 – Oct 31, 2026" in html and 'id="period-current"' in html
    assert "from=2026-09-01&amp;to=2026-10-01" in html  # previous period
    assert "usage.csv?token=" in html and "from=2026-10-01&amp;to=2026-11-01" in html


@pytest.mark.parametrize("query", [{"from": "2026-13-01", "to": "2026-12-01"}, {"from": "2026-10-01"},
                                   {"from": "2026-11-01", "to": "2026-10-01"}])
def test_bad_dates_answer_a_clear_400_page(query: dict[str, str]) -> None:
    for path in ("/subscription/status", "/subscription/usage.csv"):
        resp = app_for(FakeBilling("team", EVENTS)).get(path, params={"token": TOKEN, **query})
        assert resp.status_code == 400 and "Those dates do not work" in resp.text
        assert 'id="back"' in resp.text and resp.headers["content-type"].startswith("text/html")


def test_the_csv_is_teams_others_get_a_403() -> None:
    for plan in ("free", "pro"):
        resp = app_for(FakeBilling(plan, EVENTS)).get("/subscription/usage.csv", params={"token": TOKEN})
        assert resp.status_code == 403 and "Team" in resp.text
    resp = app_for(FakeBilling("team", EVENTS)).get("/subscription/usage.csv", params={"token": "forged"})
    assert resp.status_code == 403


def test_the_csv_has_a_row_per_day_model_and_thread_and_its_totals_add_up() -> None:
    billing = FakeBilling("team", EVENTS)
    resp = app_for(billing).get("/subscription/usage.csv", params={"token": TOKEN, "from": "2026-10-15",
                                                                    "to": "2026-11-15"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    assert resp.headers["content-disposition"] == 'attachment; filename="usage-2026-10-15-to-2026-11-14.csv"'
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert list(rows[0]) == list(pages.CSV_COLUMNS)
    assert [(r["day"], r["model"], r["thread_id"], r["billable_tokens"], r["cost_usd"]) for r in rows] == [
        ("2026-10-20", "gpt-4o", "th-old", "7000", "0.070000"),
        ("2026-11-02", "claude-3-5-haiku", "th-b", "1000", "0.001000"),
        ("2026-11-02", "gpt-4o", "th-a", "3000", "0.030000"),
        ("2026-11-05", "gpt-4o", "'=cmd|' /C calc'!A0", "500", ""),  # a spreadsheet will not run it
    ]
    assert sum(int(r["billable_tokens"]) for r in rows) == 11_500
    assert all(q.group_by == ["model", "thread"] and q.limit is None for q in billing.queries)


def test_without_usage_the_page_still_shows_the_limits() -> None:
    for failure in (BillingUnavailable("billing.rpc.usage: NoRespondersError"),
                    BillingError(ErrorBody(code="internal", message="boom"))):
        resp = app_for(FakeBilling("free", EVENTS, fail=failure)).get("/subscription/status", params={"token": TOKEN})
        assert resp.status_code == 200
        assert 'id="usage-unavailable"' in resp.text and 'id="tokens_per_month"' in resp.text
