"""usage-sync's ledger against real PostgreSQL: counters, periods, reservations, thresholds, rollover."""
from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta, timezone

import asyncpg
from billing import repository as billing_repo
from billing.apply_webhook import apply_webhook
from billing.limits import UserState, evaluate
from billing.polar_models import Webhook
from polar_billing_client.contracts import CheckRequest, UsageEvent
from usage_sync import ledger

from polar_emulator.config import PRO_PRODUCT_ID, TEAM_PRODUCT_ID
from shared.db import create_pool
from shared.periods import day_of, month_of
from shared.plans import PlanCatalog
from tests.support.webhooks import body_of, example, retarget

CATALOG = PlanCatalog(PRO_PRODUCT_ID, TEAM_PRODUCT_ID)
NOW = datetime.now(UTC)


def ev(user: str, tokens: int, *, thread: str = "t1", custom_key: bool = False, reservation: str | None = None,
       at: datetime | None = None) -> UsageEvent:
    return UsageEvent(event_id=f"ev-{uuid.uuid4().hex}", user_id=user, thread_id=thread, model="gpt-4o",
                      input_tokens=tokens, output_tokens=0, custom_key=custom_key, occurred_at=at or NOW,
                      reservation_id=reservation)


async def counters(db: asyncpg.Connection, user: str) -> dict[str, int]:
    rows = await db.fetch("SELECT limit_name, sum(used) AS used FROM usage_counters WHERE user_id=$1 GROUP BY 1", user)
    return {r["limit_name"]: r["used"] for r in rows}


async def test_an_event_settles_its_reservation_and_the_counters_hold_the_actual_tokens(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO usage_reservations (id, user_id, estimated_tokens, period_start, expires_at) "
                     "VALUES ('rsv_1', 'u1', 5000, $1, $2)", month_of(NOW)[0], NOW + timedelta(minutes=5))
    await ledger.record(db, [ev("u1", 1234, reservation="rsv_1")])
    assert await db.fetchval("SELECT settled_at IS NOT NULL FROM usage_reservations WHERE id='rsv_1'")
    assert await counters(db, "u1") == {"tokens_per_month": 1234, "messages_per_day": 1, "threads_per_month": 1}
    state = UserState.from_row(await billing_repo.user_state(db, "u1", NOW, None))
    assert evaluate(state, CheckRequest(user_id="u1"), CATALOG, NOW).reply.limits["tokens_per_month"].used == 1234


async def test_custom_keys_count_messages_and_threads_but_no_tokens(db: asyncpg.Connection) -> None:
    await ledger.record(db, [ev("u2", 900, custom_key=True, thread="a"), ev("u2", 100, thread="b")])
    assert await counters(db, "u2") == {"tokens_per_month": 100, "messages_per_day": 2, "threads_per_month": 2}
    assert await db.fetchval("SELECT billable_tokens FROM usage_events WHERE custom_key") == 0


async def test_a_paid_plans_tokens_count_in_its_billing_period(db: asyncpg.Connection) -> None:
    payload = retarget(example("subscription.active"), "paid")
    payload["data"]["customer"]["external_id"] = "u3"
    start, end = NOW - timedelta(days=10), NOW + timedelta(days=20)
    payload["data"]["current_period_start"], payload["data"]["current_period_end"] = start.isoformat(), end.isoformat()
    await apply_webhook(db, CATALOG, Webhook.parse("wh-paid", body_of(payload)))
    await ledger.record(db, [ev("u3", 500)])
    row = await db.fetchrow("SELECT period_start, period_end FROM usage_counters "
                            "WHERE user_id='u3' AND limit_name='tokens_per_month'")
    assert (row["period_start"], row["period_end"]) == (start, end)


async def test_thresholds_are_recorded_once_per_limit_and_period_even_with_concurrent_batches(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=8)
    try:
        async def batch() -> None:
            async with pool.acquire() as conn:
                await ledger.record(conn, [ev("u4", 10_000, thread=f"t{uuid.uuid4().hex[:4]}") for _ in range(3)])

        await asyncio.gather(*(batch() for _ in range(6)))  # 180,000 tokens on Free's 100,000
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT limit_name, percent FROM usage_thresholds WHERE user_id='u4' ORDER BY 1, 2")
            assert [(r["limit_name"], r["percent"]) for r in rows] == [("tokens_per_month", 80),
                                                                       ("tokens_per_month", 100)]
            assert await conn.fetchval("SELECT sum(used) FROM usage_counters WHERE user_id='u4' "
                                       "AND limit_name='tokens_per_month'") == 180_000
    finally:
        await pool.close()


async def test_a_new_period_starts_the_counters_at_zero(db: asyncpg.Connection) -> None:
    await ledger.record(db, [ev("u5", 100_000)])
    state = UserState.from_row(await billing_repo.user_state(db, "u5", NOW, None))
    assert not evaluate(state, CheckRequest(user_id="u5"), CATALOG, NOW).reply.allowed
    next_month = month_of(NOW)[1] + timedelta(minutes=1)  # the injected clock: just after the reset
    state = UserState.from_row(await billing_repo.user_state(db, "u5", next_month, None))
    reply = evaluate(state, CheckRequest(user_id="u5"), CATALOG, next_month).reply
    assert reply.allowed and reply.limits["tokens_per_month"].used == 0


async def test_messages_count_in_the_events_utc_day_whatever_its_offset(db: asyncpg.Connection) -> None:
    """The batch statement derives the day in SQL: it must equal shared.periods.day_of for offsets either side."""
    plus = timezone(timedelta(hours=5, minutes=30))
    minus = timezone(timedelta(hours=-7))
    events = [ev("u6", 10, at=datetime(2026, 3, 1, 4, 0, tzinfo=plus)),  # 2026-02-28 22:30 UTC
              ev("u6", 10, at=datetime(2026, 2, 28, 23, 59, 59, 999999, tzinfo=UTC)),
              ev("u6", 10, at=datetime(2026, 2, 28, 17, 0, tzinfo=minus)),  # 2026-03-01 00:00 UTC
              ev("u6", 10, at=datetime(2026, 3, 1, 0, 0, tzinfo=UTC))]
    await ledger.record(db, events)
    rows = await db.fetch("SELECT period_start, period_end, used FROM usage_counters "
                          "WHERE user_id='u6' AND limit_name='messages_per_day' ORDER BY 1")
    assert [(r["period_start"], r["period_end"], r["used"]) for r in rows] == [
        (*day_of(events[1].occurred_at), 2), (*day_of(events[3].occurred_at), 2)]
    rollups = await db.fetch("SELECT day, events FROM usage_rollups WHERE user_id='u6' ORDER BY 1")
    assert [(r["day"], r["events"]) for r in rollups] == [(date(2026, 2, 28), 2), (date(2026, 3, 1), 2)]
    tokens = await db.fetch("SELECT period_start, used FROM usage_counters "
                            "WHERE user_id='u6' AND limit_name='tokens_per_month' ORDER BY 1")
    assert [(r["period_start"], r["used"]) for r in tokens] == [(month_of(events[1].occurred_at)[0], 20),
                                                              (month_of(events[3].occurred_at)[0], 20)]


async def test_remembered_threads_are_not_counted_twice_and_a_repeats_thread_is_not_remembered(
        db: asyncpg.Connection) -> None:
    seen = ledger.Remembered()
    first = ev("u7", 10, thread="a")
    seen.add(await ledger.record(db, [first, ev("u7", 10, thread="b")], seen))
    assert {t[2] for t in seen.threads if t[0] == "u7"} == {"a", "b"}
    seen.add(await ledger.record(db, [ev("u7", 10, thread="a"), ev("u7", 10, thread="c")], seen))
    assert (await counters(db, "u7"))["threads_per_month"] == 3

    # A repeat of `first` from another month: nothing of it is written, and its thread there is not remembered,
    # so a new event in that thread and month still counts the thread.
    last_month = month_of(NOW)[0] - timedelta(days=3)
    repeat = first.model_copy(update={"occurred_at": last_month})
    result = await ledger.record(db, [repeat], seen)
    assert (result.inserted, result.duplicates, result.threads) == (0, 1, set())
    seen.add(result)
    await ledger.record(db, [ev("u7", 10, thread="a", at=last_month)], seen)
    rows = await db.fetch("SELECT period_start, used FROM usage_counters "
                          "WHERE user_id='u7' AND limit_name='threads_per_month' ORDER BY 1")
    assert [r["used"] for r in rows] == [1, 3]


async def test_crossings_follow_the_users_plan(db: asyncpg.Connection) -> None:
    """Pro's 1,000,000 tokens: 850,000 crosses 80 % only; Free's 100,000 would have crossed both."""
    payload = retarget(example("subscription.active"), "pro-crossing")
    payload["data"]["customer"]["external_id"] = "u8"
    payload["data"]["product_id"] = PRO_PRODUCT_ID
    await apply_webhook(db, CATALOG, Webhook.parse("wh-u8", body_of(payload)))
    result = await ledger.record(db, [ev("u8", 850_000), ev("u9", 85_000)])
    assert result.crossings == 2
    rows = await db.fetch("SELECT user_id, limit_name, percent, limit_value FROM usage_thresholds "
                          "WHERE user_id IN ('u8', 'u9') ORDER BY 1, 3")
    assert [tuple(r) for r in rows] == [("u8", "tokens_per_month", 80, 1_000_000),
                                        ("u9", "tokens_per_month", 80, 100_000)]
    again = await ledger.record(db, [ev("u8", 1), ev("u9", 1)])
    assert again.crossings == 0  # already stored
