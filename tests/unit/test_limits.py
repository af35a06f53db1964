"""billing.limits.evaluate: the plan's limits against counters + open reservations, at a given `now`."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from billing.limits import Evaluation, UserState, evaluate
from polar_billing_client.contracts import CheckRequest

from shared.plans import PlanCatalog

CATALOG = PlanCatalog("prod_pro", "prod_team")
NOW = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
MONTH = "2026-03-01T00:00:00+00:00"  # counters arrive as JSON (to_jsonb of timestamptz)
LAST_MONTH = "2026-02-01T00:00:00+00:00"
TODAY = "2026-03-10T00:00:00+00:00"
YESTERDAY = "2026-03-09T00:00:00+00:00"
APR_1 = datetime(2026, 4, 1, tzinfo=UTC)
MAR_11 = datetime(2026, 3, 11, tzinfo=UTC)


def sub(plan: str = "pro", status: str = "active", entitled: bool = True,
        start: str | None = None, end: str | None = None) -> dict[str, Any]:
    return {"id": "sub_1", "plan": plan, "status": status, "entitled": entitled, "current_period_start": start,
            "current_period_end": end, "cancel_at_period_end": False}


def run(sub_row: dict[str, Any] | None = None, *, tokens: int = 0, threads: int = 0, messages: int = 0,
        period: str = MONTH, counters: list[list[Any]] | None = None, reservations: list[list[Any]] | None = None,
        thread_periods: list[Any] | None = None, now: datetime = NOW, **req: Any) -> Evaluation:
    if counters is None:
        counters = [["tokens_per_month", period, tokens], ["threads_per_month", period, threads],
                    ["messages_per_day", TODAY, messages]]
    state = UserState(sub_row, counters, reservations or [], thread_periods or [])
    return evaluate(state, CheckRequest(user_id="u1", **req), CATALOG, now)


FREE, PRO, TEAM = None, sub("pro"), sub("team")


@pytest.mark.parametrize(
    ("row", "usage", "req", "reason"),
    [
        # Free: 100k tokens / month
        (FREE, {}, {}, None),
        (FREE, {"tokens": 99_999}, {}, None),
        (FREE, {"tokens": 99_999}, {"estimated_tokens": 1}, None),
        (FREE, {"tokens": 99_999}, {"estimated_tokens": 2}, "tokens_per_month"),
        (FREE, {"tokens": 0}, {"estimated_tokens": 100_001}, "tokens_per_month"),
        (FREE, {"tokens": 100_000}, {}, "tokens_per_month"),
        (FREE, {"tokens": 100_000}, {"estimated_tokens": 0}, "tokens_per_month"),
        (FREE, {"tokens": 250_000}, {}, "tokens_per_month"),
        # Free: 50 threads / month, only a new thread counts
        (FREE, {"threads": 49}, {"thread_id": "t-new"}, None),
        (FREE, {"threads": 50}, {"thread_id": "t-new"}, "threads_per_month"),
        (FREE, {"threads": 51}, {"thread_id": "t-new"}, "threads_per_month"),
        (FREE, {"threads": 50, "thread_periods": [MONTH]}, {"thread_id": "t-known"}, None),
        (FREE, {"threads": 50, "thread_periods": [LAST_MONTH]}, {"thread_id": "t-from-feb"}, "threads_per_month"),
        (FREE, {"threads": 50}, {}, None),
        # Free: 100 messages / day
        (FREE, {"messages": 99}, {}, None),
        (FREE, {"messages": 100}, {}, "messages_per_day"),
        (FREE, {"messages": 101}, {}, "messages_per_day"),
        # Pro: tokens never refused, threads unlimited, 1000 messages / day
        (PRO, {"tokens": 5_000_000}, {"estimated_tokens": 10_000}, None),
        (PRO, {"threads": 100_000}, {"thread_id": "t-new"}, None),
        (PRO, {"messages": 999}, {}, None),
        (PRO, {"messages": 1_000}, {}, "messages_per_day"),
        # Team: nothing is capped
        (TEAM, {"tokens": 10**12, "threads": 10**9, "messages": 10**9}, {"thread_id": "t", "estimated_tokens": 10**9},
         None),
    ],
)
def test_each_limit_at_zero_under_at_and_over(row: Any, usage: dict[str, Any], req: dict[str, Any],
                                              reason: str | None) -> None:
    reply = run(row, **usage, **req).reply
    assert (reply.allowed, reply.reason) == (reason is None, reason)


@pytest.mark.parametrize(
    ("used", "estimated", "overage"),
    [(0, 10_000, False), (999_999, None, False), (990_000, 10_000, False), (990_000, 10_001, True),
     (1_000_000, None, True), (3_000_000, 500, True)],
)
def test_pro_past_its_million_tokens_is_allowed_as_overage(used: int, estimated: int | None, overage: bool) -> None:
    reply = run(PRO, tokens=used, estimated_tokens=estimated).reply
    assert (reply.allowed, reply.reason, reply.overage, reply.plan) == (True, None, overage, "pro")


def test_pro_overage_is_not_reported_when_another_limit_refuses() -> None:
    reply = run(PRO, tokens=2_000_000, messages=1_000).reply
    assert (reply.allowed, reply.reason, reply.overage) == (False, "messages_per_day", False)


def test_team_reports_every_limit_as_unlimited_with_its_usage() -> None:
    limits = run(TEAM, tokens=7, threads=3, messages=2).reply.limits
    assert {k: (v.used, v.limit) for k, v in limits.items()} == {
        "tokens_per_month": (7, None), "threads_per_month": (3, None), "messages_per_day": (2, None)}


@pytest.mark.parametrize(
    ("usage", "reason", "resets_at"),
    [
        ({"messages": 100}, "messages_per_day", MAR_11),
        ({"tokens": 100_000}, "tokens_per_month", APR_1),
        ({"tokens": 100_000, "messages": 100}, "tokens_per_month", APR_1),
        ({"threads": 50, "messages": 100}, "threads_per_month", APR_1),
        ({"tokens": 100_000, "threads": 50, "messages": 100}, "tokens_per_month", APR_1),
    ],
)
def test_the_binding_limit_is_the_one_that_resets_last(usage: dict[str, int], reason: str,
                                                       resets_at: datetime) -> None:
    reply = run(FREE, thread_id="t-new", **usage).reply
    assert (reply.allowed, reply.reason, reply.resets_at) == (False, reason, resets_at)


def test_an_allowed_reply_has_no_reset_time_and_reports_free_limits() -> None:
    reply = run(FREE, tokens=40_000, threads=3, messages=7).reply
    assert reply.resets_at is None and reply.plan == "free"
    assert {k: (v.used, v.limit, v.resets_at) for k, v in reply.limits.items()} == {
        "tokens_per_month": (40_000, 100_000, APR_1), "threads_per_month": (3, 50, APR_1),
        "messages_per_day": (7, 100, MAR_11)}


@pytest.mark.parametrize(
    ("row", "req", "reason"),
    [
        (FREE, {"model": "gpt-4o"}, "model_not_in_plan"),
        (FREE, {"model": "claude-3-5-haiku-latest"}, None),
        (FREE, {"model": "gpt-3.5-turbo"}, None),
        (PRO, {"model": "gpt-4o"}, None),
        (FREE, {"custom_key": True}, "custom_key_not_in_plan"),
        (PRO, {"custom_key": True}, None),
        (TEAM, {"custom_key": True, "model": "claude-opus-4"}, None),
        (FREE, {"model": "gpt-4o", "custom_key": True}, "model_not_in_plan"),
    ],
)
def test_models_and_custom_keys_follow_the_plan(row: Any, req: dict[str, Any], reason: str | None) -> None:
    reply = run(row, **req).reply
    assert (reply.allowed, reply.reason, reply.resets_at) == (reason is None, reason, None)


def test_a_model_refusal_wins_over_an_exceeded_limit() -> None:
    assert run(FREE, tokens=100_000, model="gpt-4o").reply.reason == "model_not_in_plan"


@pytest.mark.parametrize(
    ("row", "plan", "reason"),
    [
        (sub("pro", "past_due", True), "pro", None),
        (sub("pro", "trialing", True), "pro", None),
        (sub("pro", "canceled", False), "free", "tokens_per_month"),
        (sub("team", "incomplete_expired", False), "free", "tokens_per_month"),
        (sub("pro", "unpaid", False), "free", "subscription_inactive"),
        (sub("pro", "incomplete", False), "free", "subscription_inactive"),
        (sub("team", "paused", False), "free", "subscription_inactive"),
    ],
)
def test_only_an_entitled_row_sets_the_plan_and_a_suspended_one_says_so(row: dict[str, Any], plan: str,
                                                                        reason: str | None) -> None:
    ev = run(row, tokens=150_000)
    assert (ev.reply.plan, ev.reply.allowed, ev.reply.reason, ev.status) == (plan, reason is None, reason,
                                                                              row["status"])


@pytest.mark.parametrize("req", [{"model": "gpt-4o"}, {"custom_key": True}, {"thread_id": "t-new"}])
def test_a_suspended_subscription_turns_any_refusal_into_subscription_inactive(req: dict[str, Any]) -> None:
    reply = run(sub("pro", "unpaid", False), threads=50, **req).reply
    assert (reply.allowed, reply.reason, reply.plan) == (False, "subscription_inactive", "free")


def test_a_suspended_subscription_within_free_limits_is_allowed() -> None:
    reply = run(sub("pro", "unpaid", False), tokens=10).reply
    assert (reply.allowed, reply.reason, reply.plan) == (True, None, "free")


PAID = sub("pro", start="2026-02-15T10:00:00+00:00", end="2026-03-15T10:00:00+00:00")
FEB_15 = datetime(2026, 2, 15, 10, tzinfo=UTC)
MAR_15 = datetime(2026, 3, 15, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("row", "now", "period"),
    [
        (PAID, NOW, (FEB_15, MAR_15)),
        (PAID, datetime(2026, 3, 20, tzinfo=UTC), (MAR_15, datetime(2026, 4, 12, 10, tzinfo=UTC))),
        (sub("pro"), NOW, (datetime(2026, 3, 1, tzinfo=UTC), APR_1)),
        (None, NOW, (datetime(2026, 3, 1, tzinfo=UTC), APR_1)),
        ({**PAID, "status": "canceled", "entitled": False}, NOW, (datetime(2026, 3, 1, tzinfo=UTC), APR_1)),
    ],
)
def test_a_paid_plan_counts_in_its_billing_period_and_free_in_the_calendar_month(row: Any, now: datetime,
                                                                                  period: tuple) -> None:
    ev = run(row, now=now, counters=[])
    assert ev.period == period
    assert ev.reply.limits["tokens_per_month"].resets_at == period[1]


def test_a_paid_period_reads_its_own_counters_and_ignores_the_calendar_months() -> None:
    counters = [["tokens_per_month", "2026-02-15T10:00:00+00:00", 1_200_000],
                ["tokens_per_month", MONTH, 999], ["messages_per_day", TODAY, 4]]
    reply = run(PAID, counters=counters).reply
    assert reply.limits["tokens_per_month"].used == 1_200_000 and reply.overage is True
    assert reply.limits["tokens_per_month"].resets_at == MAR_15


def test_counters_of_another_period_or_day_are_ignored() -> None:
    counters = [["tokens_per_month", LAST_MONTH, 100_000], ["threads_per_month", LAST_MONTH, 50],
                ["messages_per_day", YESTERDAY, 100], ["messages_per_day", TODAY, 3],
                ["tokens_per_month", MONTH, 12]]
    reply = run(FREE, counters=counters, thread_id="t-new").reply
    assert reply.allowed
    assert {k: v.used for k, v in reply.limits.items()} == {
        "tokens_per_month": 12, "threads_per_month": 0, "messages_per_day": 3}


def test_counters_given_as_datetimes_are_matched_like_iso_strings() -> None:
    march = datetime(2026, 3, 1, tzinfo=UTC)
    reply = run(FREE, counters=[["tokens_per_month", march, 100_000]]).reply
    assert reply.reason == "tokens_per_month"


@pytest.mark.parametrize(
    ("usage", "reservations", "req", "reason"),
    [
        ({"tokens": 90_000}, [[MONTH, 9_999, False, "t1"]], {"estimated_tokens": 1}, None),
        ({"tokens": 90_000}, [[MONTH, 10_000, False, "t1"]], {}, "tokens_per_month"),
        ({"tokens": 90_000}, [[LAST_MONTH, 10_000, False, "t1"]], {}, None),
        ({"messages": 98}, [[MONTH, 0, False, "t1"]], {}, None),
        ({"messages": 98}, [[MONTH, 0, False, "t1"], [MONTH, 0, False, "t1"]], {}, "messages_per_day"),
        ({"threads": 49}, [[MONTH, 0, True, "t-reserved"]], {"thread_id": "t-new"}, "threads_per_month"),
        ({"threads": 49}, [[MONTH, 0, True, "t-reserved"]], {"thread_id": "t-reserved"}, None),
        ({"threads": 49}, [[MONTH, 0, False, "t-old"]], {"thread_id": "t-new"}, None),
    ],
)
def test_open_reservations_count_toward_tokens_messages_and_threads(usage: dict[str, int], reservations: list,
                                                                    req: dict[str, Any], reason: str | None) -> None:
    reply = run(FREE, reservations=reservations, **usage, **req).reply
    assert (reply.allowed, reply.reason) == (reason is None, reason)


def test_reserved_usage_shows_in_the_reported_limits() -> None:
    reservations = [[MONTH, 500, True, "t-a"], [MONTH, 300, True, "t-b"], [MONTH, 200, False, "t-c"]]
    reply = run(FREE, tokens=1_000, threads=2, messages=5, reservations=reservations).reply
    assert {k: v.used for k, v in reply.limits.items()} == {
        "tokens_per_month": 2_000, "threads_per_month": 4, "messages_per_day": 8}


@pytest.mark.parametrize(
    ("thread_id", "thread_periods", "reservations", "new"),
    [
        (None, [], [], False),
        ("t", [], [], True),
        ("t", [MONTH], [], False),
        ("t", [LAST_MONTH], [], True),
        ("t", [], [[MONTH, 0, True, "t"]], False),
        ("t", [], [[MONTH, 0, True, "other"]], True),
    ],
)
def test_a_thread_is_new_unless_seen_or_reserved_in_this_period(thread_id: str | None, thread_periods: list,
                                                                reservations: list, new: bool) -> None:
    ev = run(FREE, thread_id=thread_id, thread_periods=thread_periods, reservations=reservations)
    assert ev.new_thread is new
