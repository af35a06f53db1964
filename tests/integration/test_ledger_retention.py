"""The ledger's months and retention against real PostgreSQL: 15 months of usage, 12 kept; whole months dropped, the
periods behind the cut pruned, the current period's counters and limits untouched, deduplication exact."""
from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest
from billing import repository as billing_repo
from billing.apply_webhook import apply_webhook
from billing.limits import UserState, evaluate
from billing.polar_models import Webhook
from nats.aio.msg import Msg
from polar_billing_client.contracts import CheckRequest, UsageEvent
from usage_sync import handlers, ledger, retention
from usage_sync import repository as repo

from polar_emulator.config import PRO_PRODUCT_ID, TEAM_PRODUCT_ID
from shared.messaging.consume import Invalid
from shared.plans import PlanCatalog
from tests.support.webhooks import body_of, example, retarget

CATALOG = PlanCatalog(PRO_PRODUCT_ID, TEAM_PRODUCT_ID)
NOW = datetime(2026, 4, 15, 12, 0, tzinfo=UTC)  # the injected clock: mid-April 2026
RETENTION_DAYS = 365  # twelve months: the cut is 2025-04-15 12:00
CUT = NOW - timedelta(days=RETENTION_DAYS)
START = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)  # fifteen months of usage before NOW: January 2025 … April 2026
FREE, HEAVY, PAID = "usr_free", "usr_heavy", "usr_paid"  # HEAVY crosses Free's 80 % and 100 % most months
PAID_PERIOD = (datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC))


def history() -> list[UsageEvent]:
    """About 2,000 events, a day apart per user, each user's threads renewed monthly."""
    rng = random.Random(11)
    events = []
    day = START
    while day < NOW:
        for user, tokens in ((FREE, (100, 2500)), (HEAVY, (2500, 6000)), (PAID, (100, 2500))):
            for n in range(rng.randint(1, 2)):
                at = day + timedelta(seconds=rng.randint(0, 86_399))
                if at >= NOW:
                    continue
                events.append(UsageEvent(
                    event_id=f"ev-{user}-{at:%Y%m%d%H%M%S}-{n}", user_id=user,
                    thread_id=f"th-{at:%Y%m}-{rng.randint(1, 6)}", model="gpt-4o",
                    input_tokens=rng.randint(*tokens), output_tokens=rng.randint(0, 400),
                    custom_key=rng.random() < 0.05, occurred_at=at))
        day += timedelta(days=1)
    return events


async def subscribe(db: asyncpg.Connection, user: str, period: tuple[datetime, datetime]) -> None:
    payload = retarget(example("subscription.active"), f"paid-{user}")
    payload["data"]["customer"]["external_id"] = user
    payload["data"]["current_period_start"], payload["data"]["current_period_end"] = (p.isoformat() for p in period)
    await apply_webhook(db, CATALOG, Webhook.parse(f"wh-{user}", body_of(payload)))


async def limits(db: asyncpg.Connection, user: str) -> dict:
    """What billing's check answers the user at NOW, limit by limit."""
    state = UserState.from_row(await billing_repo.user_state(db, user, NOW, None))
    reply = evaluate(state, CheckRequest(user_id=user), CATALOG, NOW).reply
    return {name: s.model_dump() for name, s in reply.limits.items()}


async def current_counters(db: asyncpg.Connection) -> list[tuple]:
    return [tuple(r) for r in await db.fetch(
        "SELECT user_id, limit_name, period_start, period_end, used FROM usage_counters WHERE period_end > $1 "
        "ORDER BY 1, 2, 3", NOW)]


async def attached_months(db: asyncpg.Connection) -> set[str]:
    return {r["relname"] for r in await db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'usage_events'::regclass")}


async def tables_named(db: asyncpg.Connection, names: list[str]) -> set[str]:
    return {r["relname"] for r in await db.fetch("SELECT relname FROM pg_class WHERE relname = ANY($1)", names)}


@pytest.fixture
async def fifteen_months(db: asyncpg.Connection) -> list[UsageEvent]:
    # The service kept 100 more days until now: it created the months back to January 2025 (and two ahead).
    before = await retention.run_once(db, NOW, RETENTION_DAYS + 100)
    assert before is not None and not before.dropped
    await subscribe(db, PAID, PAID_PERIOD)
    events = history()
    for i in range(0, len(events), 250):
        await ledger.record(db, events[i:i + 250])
    # Reservations: two closed before the cut, one closed after it, one open now.
    for rid, start, expires, closed in (
            ("rsv_settled_2025_01", "2025-01-01", "2025-01-20T10:00:00Z", "settled_at"),
            ("rsv_released_2025_03", "2025-03-01", "2025-03-31T23:30:00Z", "released_at"),
            ("rsv_settled_2025_05", "2025-05-01", "2025-05-02T10:00:00Z", "settled_at"),
            ("rsv_open_now", "2026-04-01", (NOW + timedelta(minutes=5)).isoformat(), None)):
        await db.execute(
            "INSERT INTO usage_reservations (id, user_id, estimated_tokens, period_start, expires_at, settled_at, "
            "released_at) VALUES ($1, $2, 500, $3::text::timestamptz, $4::text::timestamptz, $5, $6)",
            rid, FREE, start, expires, NOW if closed == "settled_at" else None,
            NOW if closed == "released_at" else None)
    return events


async def test_fifteen_months_with_twelve_kept_drops_three_months_and_keeps_limits_and_dedup_exact(
        db: asyncpg.Connection, fifteen_months: list[UsageEvent]) -> None:
    events = fifteen_months
    assert len(events) == len({e.event_id for e in events}) > 2000
    assert await db.fetchval("SELECT count(*) FROM usage_events") == len(events)
    assert {f"usage_events_p2025{m:02d}" for m in range(1, 13)} <= await attached_months(db)
    counters_before = await current_counters(db)
    limits_before = {u: await limits(db, u) for u in (FREE, HEAVY, PAID)}
    assert limits_before[PAID]["tokens_per_month"]["used"] > 0 and limits_before[FREE]["messages_per_day"]["used"] > 0
    rows_kept = await db.fetchval("SELECT count(*) FROM usage_events WHERE occurred_at >= '2025-04-01'")
    old_crossings = await db.fetchval("SELECT count(*) FROM usage_thresholds WHERE period_start < '2025-04-01'")
    assert old_crossings >= 4  # HEAVY crossed 80 % and 100 % in January, February and March 2025

    for stored in (CUT - timedelta(days=1), CUT + timedelta(days=1)):
        await db.execute("INSERT INTO dead_letters (source, subject, reason, created_at) "
                         "VALUES ('usage-sync', 'usage.event.u', 'too old', $1)", stored)

    done = await retention.run_once(db, NOW, RETENTION_DAYS)

    assert done is not None and done.cut == CUT
    assert [r["created_at"] for r in await db.fetch("SELECT created_at FROM dead_letters")] == [
        CUT + timedelta(days=1)]
    assert done.pruned["dead_letters"] == 1
    dropped = ["usage_events_p202501", "usage_events_p202502", "usage_events_p202503"]
    assert done.dropped == [date(2025, 1, 1), date(2025, 2, 1), date(2025, 3, 1)]
    attached = await attached_months(db)
    assert not attached & set(dropped) and "usage_events_p202504" in attached
    assert await tables_named(db, dropped) == set()  # dropped, not merely detached
    # The ledger keeps whole months: April 2025 stays, even its days before the cut.
    assert await db.fetchval("SELECT min(occurred_at) FROM usage_events") >= datetime(2025, 4, 1, tzinfo=UTC)
    assert await db.fetchval("SELECT count(*) FROM usage_events") == rows_kept
    assert await db.fetchval("SELECT count(*) FROM usage_events WHERE occurred_at < $1", CUT) > 0
    # The ids go with their months, and only with them.
    assert await db.fetchval("SELECT count(*) FROM usage_event_ids") == rows_kept
    assert await db.fetchval("SELECT min(occurred_at) FROM usage_event_ids") >= datetime(2025, 4, 1, tzinfo=UTC)

    # Periods that ended by the cut are gone with their threads and crossings; the current ones are untouched.
    assert await db.fetchval("SELECT count(*) FROM usage_counters WHERE period_end <= $1", CUT) == 0
    assert await db.fetchval("SELECT count(*) FROM usage_counters WHERE period_start = '2025-04-01'") > 0
    assert await db.fetchval("SELECT count(*) FROM usage_threads WHERE period_start < '2025-04-01'") == 0
    assert await db.fetchval("SELECT count(*) FROM usage_threads WHERE period_start = '2025-04-01'") > 0
    assert await db.fetchval("SELECT count(*) FROM usage_thresholds WHERE period_start < '2025-04-01'") == 0
    assert await current_counters(db) == counters_before
    assert {u: await limits(db, u) for u in (FREE, HEAVY, PAID)} == limits_before
    # The current month's tokens counter is still the ledger's own sum.
    assert await db.fetchval(
        "SELECT used FROM usage_counters WHERE user_id = $1 AND limit_name = 'tokens_per_month' "
        "AND period_start = '2026-04-01'", FREE) == await db.fetchval(
        "SELECT sum(billable_tokens) FROM usage_events WHERE user_id = $1 AND occurred_at >= '2026-04-01'", FREE)
    assert {r["id"] for r in await db.fetch("SELECT id FROM usage_reservations")} == {
        "rsv_settled_2025_05", "rsv_open_now"}
    assert await db.fetchval("SELECT count(*) FROM usage_rollups WHERE day < '2025-04-15'") == 0
    assert await db.fetchval("SELECT count(*) FROM usage_rollups_by_model WHERE day < '2025-04-15'") == 0
    assert await db.fetchval("SELECT count(*) FROM usage_rollups_by_model WHERE day = '2025-04-15'") > 0
    assert await db.fetchval("SELECT count(*) FROM usage_rollups_by_month WHERE month < '2025-04-01'") == 0
    assert await db.fetchval("SELECT count(*) FROM usage_rollups_by_month WHERE month = '2025-04-01'") > 0

    # A replay of an event from a dropped month: its id is forgotten, and for the paid user a late event would count
    # in the current period. It is not counted: refused at the edge, skipped by the ledger.
    old = next(e for e in events if e.user_id == PAID and e.occurred_at < datetime(2025, 2, 1, tzinfo=UTC))
    assert await db.fetchval("SELECT count(*) FROM usage_event_ids WHERE event_id = $1", old.event_id) == 0
    with pytest.raises(Invalid, match="too old"):
        handlers.in_ledger_window(RETENTION_DAYS, clock=lambda: NOW)(
            Msg(None, data=old.model_dump_json().encode()))  # type: ignore[arg-type]
    result = await ledger.record(db, [old], oldest=CUT)
    assert (result.inserted, result.too_old) == (0, 1)
    assert await current_counters(db) == counters_before

    # Within the window a repeat is recorded once, even days apart and carrying another occurred_at (another month).
    march = next(e for e in events if e.user_id == FREE and e.occurred_at.month == 3 and e.occurred_at.year == 2026)
    later = march.model_copy(update={"occurred_at": NOW - timedelta(days=2)})
    for repeat in (march, later):
        result = await ledger.record(db, [repeat], oldest=CUT)
        assert (result.inserted, result.duplicates) == (0, 1)
    assert await db.fetchval("SELECT count(*) FROM usage_events WHERE event_id = $1", march.event_id) == 1
    assert await current_counters(db) == counters_before

    again = await retention.run_once(db, NOW, RETENTION_DAYS)  # nothing left to do
    assert again is not None and (again.created, again.dropped) == ([], [])
    assert not any(again.pruned.values())


async def test_a_run_that_stopped_after_detaching_a_month_is_finished_by_the_next(
        db: asyncpg.Connection, fifteen_months: list[UsageEvent]) -> None:
    await repo.detach_month(db, date(2025, 1, 1))  # as if the process died right after the detach
    assert "usage_events_p202501" not in await attached_months(db)
    assert await db.fetchval("SELECT count(*) FROM usage_event_ids WHERE occurred_at < '2025-02-01'") > 0

    done = await retention.run_once(db, NOW, RETENTION_DAYS)

    assert done is not None and done.dropped == [date(2025, 1, 1), date(2025, 2, 1), date(2025, 3, 1)]
    assert await tables_named(db, ["usage_events_p202501"]) == set()
    assert await db.fetchval("SELECT count(*) FROM usage_event_ids WHERE occurred_at < '2025-04-01'") == 0


async def test_months_are_created_ahead_and_an_event_beyond_them_is_refused_at_the_edge(
        db: asyncpg.Connection) -> None:
    done = await retention.run_once(db, NOW, RETENTION_DAYS)
    assert done is not None
    assert {"usage_events_p202604", "usage_events_p202605", "usage_events_p202606"} <= await attached_months(db)
    parse = handlers.in_ledger_window(RETENTION_DAYS, clock=lambda: NOW)

    def msg(at: datetime) -> Msg:
        event = UsageEvent(event_id="ev-edge", user_id="u", thread_id="t", model="gpt-4o", input_tokens=1,
                           output_tokens=1, occurred_at=at)
        return Msg(None, data=event.model_dump_json().encode())  # type: ignore[arg-type]

    assert parse(msg(NOW + retention.MAX_AHEAD)).occurred_at == NOW + retention.MAX_AHEAD
    assert parse(msg(CUT)).occurred_at == CUT
    with pytest.raises(Invalid, match="too far ahead"):
        parse(msg(NOW + retention.MAX_AHEAD + timedelta(seconds=1)))
    with pytest.raises(Invalid, match="too old"):
        parse(msg(CUT - timedelta(seconds=1)))
    # Whatever the edge lets in has its month (the last day MAX_AHEAD reaches, with room to spare).
    result = await ledger.record(db, [UsageEvent(event_id="ev-ahead", user_id="u", thread_id="t", model="gpt-4o",
                                                 input_tokens=1, output_tokens=1,
                                                 occurred_at=NOW + retention.MAX_AHEAD)])
    assert result.inserted == 1
