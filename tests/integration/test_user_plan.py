"""The `user_plan` view: the one definition of "the subscription that sets a user's plan", read by billing's limit
checks and by usage-sync's counters. They used to be three queries with different filters."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from billing import repository as billing_repo
from billing.apply_webhook import apply_webhook
from billing.limits import UserState, evaluate
from billing.polar_models import Webhook
from polar_billing_client.contracts import CheckRequest, UsageEvent
from usage_sync import ledger

from polar_emulator.config import PRO_PRODUCT_ID, TEAM_PRODUCT_ID
from shared.periods import month_of
from shared.plans import ENTITLED_STATUSES, PlanCatalog
from tests.support.webhooks import body_of, example, retarget

CATALOG = PlanCatalog(PRO_PRODUCT_ID, TEAM_PRODUCT_ID)
NOW = datetime.now(UTC)
# Every status Polar's document lists for a subscription.
STATUSES = ("incomplete", "incomplete_expired", "trialing", "active", "past_due", "canceled", "unpaid", "paused")


async def subscribe(db: asyncpg.Connection, user: str, *, plan: str, status: str = "active",
                    period: tuple[datetime, datetime] | None = None, modified: datetime = NOW) -> None:
    """The subscription as billing learns it: a webhook through billing's apply path."""
    suffix = uuid.uuid4().hex[:8]
    payload = retarget(example("subscription.updated"), suffix)
    data = payload["data"]
    data["customer"]["external_id"] = user
    data["product_id"] = PRO_PRODUCT_ID if plan == "pro" else TEAM_PRODUCT_ID
    data["status"] = status
    data["modified_at"] = modified.isoformat()
    start, end = period or (None, None)
    data["current_period_start"] = start.isoformat() if start else None
    data["current_period_end"] = end.isoformat() if end else None
    assert (await apply_webhook(db, CATALOG, Webhook.parse(f"wh-{suffix}", body_of(payload)))).status == "applied"


def usage(user: str, tokens: int) -> UsageEvent:
    return UsageEvent(event_id=f"ev-{uuid.uuid4().hex}", user_id=user, thread_id="t", model="gpt-4o",
                      input_tokens=tokens, output_tokens=0, occurred_at=NOW)


async def test_usage_sync_counts_in_the_period_billing_reads_when_the_ranking_subscription_has_no_dates(
        db: asyncpg.Connection) -> None:
    # A Pro subscription with a mid-month period, and a newer, higher Team one that Polar sent without period dates.
    # usage-sync once skipped rows without dates (so it counted under Pro's period) while billing took Team (and
    # read the calendar month): the user's tokens then vanished from every limit check.
    await subscribe(db, "u-both", plan="pro", period=(NOW - timedelta(days=10), NOW + timedelta(days=20)),
                    modified=NOW - timedelta(days=1))
    await subscribe(db, "u-both", plan="team", period=None)
    await ledger.record(db, [usage("u-both", 700)])

    state = UserState.from_row(await billing_repo.user_state(db, "u-both", NOW, None))
    reply = evaluate(state, CheckRequest(user_id="u-both"), CATALOG, NOW).reply
    assert reply.plan == "team"
    assert reply.limits["tokens_per_month"].used == 700
    start = await db.fetchval("SELECT period_start FROM usage_counters WHERE user_id = 'u-both' "
                              "AND limit_name = 'tokens_per_month'")
    assert start == month_of(NOW)[0]


@pytest.mark.parametrize("status", STATUSES)
async def test_the_view_entitles_exactly_the_statuses_the_plan_catalog_names(db: asyncpg.Connection,
                                                                            status: str) -> None:
    user = f"u-{status}"
    await subscribe(db, user, plan="pro", status=status, period=(NOW - timedelta(days=1), NOW + timedelta(days=29)))
    row = await db.fetchrow("SELECT plan, status, entitled FROM user_plan WHERE user_id = $1", user)
    assert (row["status"], row["entitled"]) == (status, status in ENTITLED_STATUSES)
    assert (await billing_repo.effective_plan(db, user) is not None) == (status in ENTITLED_STATUSES)


async def test_the_higher_entitled_plan_wins_and_an_entitled_row_beats_a_newer_ended_one(
        db: asyncpg.Connection) -> None:
    period = (NOW - timedelta(days=1), NOW + timedelta(days=29))
    await subscribe(db, "u-rank", plan="pro", period=period, modified=NOW)
    await subscribe(db, "u-rank", plan="team", period=period, modified=NOW - timedelta(days=3))
    await subscribe(db, "u-rank", plan="team", status="canceled", period=period, modified=NOW + timedelta(hours=1))
    assert (await billing_repo.effective_plan(db, "u-rank"))["plan"] == "team"
    assert await db.fetchval("SELECT status FROM user_plan WHERE user_id = 'u-rank'") == "active"
