"""All of billing's SQL, parameterized. Billing owns customers, subscriptions, checkouts, orders, meter_credits,
webhook_log, billing_outbox and usage_reservations (docs/architecture.md); it reads usage-sync's counters."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from shared.plans import ENTITLED_STATUSES


# --- webhook log ----------------------------------------------------------------------------------------------
async def claim_webhook(conn: asyncpg.Connection, webhook_id: str, event_type: str, event_ts: datetime | None,
                        payload: dict[str, Any], *, replay: bool = False) -> bool:
    """Take the webhook for applying in this transaction. False: it was applied (or skipped) already.

    A `failed` row is taken again (a redelivery or a replay after the fault was fixed); `replay=True` takes any row.
    Concurrent deliveries of one id serialize on the primary key: the second sees the first's committed row.
    The row is written `applied` at once, the common outcome, saving a statement per webhook: nobody sees it before
    the transaction commits, and finish_webhook corrects it when the outcome is another (a rollback removes it).
    """
    row = await conn.fetchrow(
        """INSERT INTO webhook_log (webhook_id, type, event_ts, payload, status, attempts, processed_at)
           VALUES ($1, $2, $3, $4, 'applied', 1, now())
           ON CONFLICT (webhook_id) DO UPDATE
               SET attempts = webhook_log.attempts + 1, status = 'applied', error = NULL,
                   payload = EXCLUDED.payload, event_ts = EXCLUDED.event_ts, processed_at = now()
               WHERE webhook_log.status IN ('failed', 'received') OR $5
           RETURNING webhook_id""",
        webhook_id, event_type, event_ts, payload, replay,
    )
    return row is not None


async def finish_webhook(conn: asyncpg.Connection, webhook_id: str, status: str, note: str | None = None) -> None:
    await conn.execute(
        "UPDATE webhook_log SET status = $2, error = $3, processed_at = now() WHERE webhook_id = $1",
        webhook_id, status, note,
    )


async def record_failure(conn: asyncpg.Connection, webhook_id: str, event_type: str, payload: dict[str, Any] | None,
                         error: str, attempts: int) -> None:
    """Outside the failed transaction: the log row says `failed` with the error; an applied row is never touched."""
    await conn.execute(
        """INSERT INTO webhook_log (webhook_id, type, payload, status, attempts, error, processed_at)
           VALUES ($1, $2, $3, 'failed', $4, $5, now())
           ON CONFLICT (webhook_id) DO UPDATE
               SET status = 'failed', attempts = GREATEST(webhook_log.attempts, EXCLUDED.attempts),
                   error = EXCLUDED.error, processed_at = now()
               WHERE webhook_log.status NOT IN ('applied', 'skipped')""",
        webhook_id, event_type, payload, attempts, error.replace("\x00", "\ufffd")[:2000],
    )


async def get_webhook(conn: asyncpg.Connection, webhook_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM webhook_log WHERE webhook_id = $1", webhook_id)


async def failed_webhooks(conn: asyncpg.Connection, limit: int = 100) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT webhook_id, type, attempts, error, received_at, processed_at FROM webhook_log "
        "WHERE status = 'failed' ORDER BY received_at LIMIT $1", limit)


async def failed_webhook_ids(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT webhook_id FROM webhook_log WHERE status = 'failed' ORDER BY received_at")
    return [r["webhook_id"] for r in rows]


async def delete_webhooks_before(conn: asyncpg.Connection, cutoff: datetime) -> int:
    result = await conn.execute("DELETE FROM webhook_log WHERE received_at < $1", cutoff)
    return int(result.split()[-1])


# --- monotonic upserts ----------------------------------------------------------------------------------------
# Each statement inserts, or updates only when the incoming (version, event_ts) is newer than the stored pair, so a
# duplicate or an out-of-order delivery never regresses a row. A NULL user id (or checkout / subscription link) never
# erases one learnt earlier. Each returns True when the row changed.

@dataclass
class CustomerRow:
    id: str
    user_id: str | None
    deleted_at: datetime | None
    version: datetime
    event_ts: datetime


@dataclass
class SubscriptionRow:
    id: str
    customer_id: str
    user_id: str | None
    product_id: str
    plan: str | None
    unknown_product: bool
    status: str
    amount_cents: int | None
    currency: str | None
    recurring_interval: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    started_at: datetime | None
    ends_at: datetime | None
    ended_at: datetime | None
    checkout_id: str | None
    version: datetime
    event_ts: datetime


@dataclass
class CheckoutRow:
    id: str
    user_id: str | None
    product_id: str | None
    status: str
    subscription_id: str | None
    version: datetime
    event_ts: datetime


@dataclass
class OrderRow:
    id: str
    customer_id: str
    user_id: str | None
    subscription_id: str | None
    product_id: str | None
    status: str
    billing_reason: str | None
    paid: bool
    total_amount_cents: int
    refunded_amount_cents: int
    currency: str | None
    version: datetime
    event_ts: datetime


@dataclass
class MeterCreditRow:
    grant_id: str
    customer_id: str
    user_id: str | None
    subscription_id: str | None
    benefit_id: str
    meter_id: str | None
    units: int
    rollover: bool
    granted_at: datetime | None
    revoked_at: datetime | None
    version: datetime
    event_ts: datetime


async def upsert_customer(conn: asyncpg.Connection, r: CustomerRow) -> bool:
    return await conn.fetchval(
        """INSERT INTO customers (id, user_id, deleted_at, version, event_ts) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (id) DO UPDATE SET user_id = COALESCE(EXCLUDED.user_id, customers.user_id),
               deleted_at = EXCLUDED.deleted_at, version = EXCLUDED.version, event_ts = EXCLUDED.event_ts,
               updated_at = now()
           WHERE (customers.version, customers.event_ts) < (EXCLUDED.version, EXCLUDED.event_ts)
           RETURNING true""",
        r.id, r.user_id, r.deleted_at, r.version, r.event_ts,
    ) is not None


async def upsert_subscription(conn: asyncpg.Connection, r: SubscriptionRow) -> bool:
    return await conn.fetchval(
        """INSERT INTO subscriptions (id, customer_id, user_id, product_id, plan, unknown_product, status,
               amount_cents, currency, recurring_interval, current_period_start, current_period_end,
               cancel_at_period_end, canceled_at, started_at, ends_at, ended_at, checkout_id, version, event_ts)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
           ON CONFLICT (id) DO UPDATE SET customer_id = EXCLUDED.customer_id,
               user_id = COALESCE(EXCLUDED.user_id, subscriptions.user_id), product_id = EXCLUDED.product_id,
               plan = EXCLUDED.plan, unknown_product = EXCLUDED.unknown_product, status = EXCLUDED.status,
               amount_cents = EXCLUDED.amount_cents, currency = EXCLUDED.currency,
               recurring_interval = EXCLUDED.recurring_interval,
               current_period_start = EXCLUDED.current_period_start,
               current_period_end = EXCLUDED.current_period_end,
               cancel_at_period_end = EXCLUDED.cancel_at_period_end, canceled_at = EXCLUDED.canceled_at,
               started_at = EXCLUDED.started_at, ends_at = EXCLUDED.ends_at, ended_at = EXCLUDED.ended_at,
               checkout_id = COALESCE(EXCLUDED.checkout_id, subscriptions.checkout_id),
               version = EXCLUDED.version, event_ts = EXCLUDED.event_ts, updated_at = now()
           WHERE (subscriptions.version, subscriptions.event_ts) < (EXCLUDED.version, EXCLUDED.event_ts)
           RETURNING true""",
        r.id, r.customer_id, r.user_id, r.product_id, r.plan, r.unknown_product, r.status, r.amount_cents,
        r.currency, r.recurring_interval, r.current_period_start, r.current_period_end, r.cancel_at_period_end,
        r.canceled_at, r.started_at, r.ends_at, r.ended_at, r.checkout_id, r.version, r.event_ts,
    ) is not None


async def upsert_checkout(conn: asyncpg.Connection, r: CheckoutRow) -> bool:
    return await conn.fetchval(
        """INSERT INTO checkouts (id, user_id, product_id, status, subscription_id, version, event_ts)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (id) DO UPDATE SET user_id = COALESCE(EXCLUDED.user_id, checkouts.user_id),
               product_id = EXCLUDED.product_id, status = EXCLUDED.status,
               subscription_id = COALESCE(EXCLUDED.subscription_id, checkouts.subscription_id),
               version = EXCLUDED.version, event_ts = EXCLUDED.event_ts, updated_at = now()
           WHERE (checkouts.version, checkouts.event_ts) < (EXCLUDED.version, EXCLUDED.event_ts)
           RETURNING true""",
        r.id, r.user_id, r.product_id, r.status, r.subscription_id, r.version, r.event_ts,
    ) is not None


async def upsert_order(conn: asyncpg.Connection, r: OrderRow) -> bool:
    return await conn.fetchval(
        """INSERT INTO orders (id, customer_id, user_id, subscription_id, product_id, status, billing_reason, paid,
               total_amount_cents, refunded_amount_cents, currency, version, event_ts)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
           ON CONFLICT (id) DO UPDATE SET customer_id = EXCLUDED.customer_id,
               user_id = COALESCE(EXCLUDED.user_id, orders.user_id), subscription_id = EXCLUDED.subscription_id,
               product_id = EXCLUDED.product_id, status = EXCLUDED.status, billing_reason = EXCLUDED.billing_reason,
               paid = EXCLUDED.paid, total_amount_cents = EXCLUDED.total_amount_cents,
               refunded_amount_cents = EXCLUDED.refunded_amount_cents, currency = EXCLUDED.currency,
               version = EXCLUDED.version, event_ts = EXCLUDED.event_ts, updated_at = now()
           WHERE (orders.version, orders.event_ts) < (EXCLUDED.version, EXCLUDED.event_ts)
           RETURNING true""",
        r.id, r.customer_id, r.user_id, r.subscription_id, r.product_id, r.status, r.billing_reason, r.paid,
        r.total_amount_cents, r.refunded_amount_cents, r.currency, r.version, r.event_ts,
    ) is not None


async def upsert_meter_credit(conn: asyncpg.Connection, r: MeterCreditRow) -> bool:
    return await conn.fetchval(
        """INSERT INTO meter_credits (grant_id, customer_id, user_id, subscription_id, benefit_id, meter_id, units,
               rollover, granted_at, revoked_at, version, event_ts)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
           ON CONFLICT (grant_id) DO UPDATE SET customer_id = EXCLUDED.customer_id,
               user_id = COALESCE(EXCLUDED.user_id, meter_credits.user_id),
               subscription_id = EXCLUDED.subscription_id, benefit_id = EXCLUDED.benefit_id,
               meter_id = EXCLUDED.meter_id, units = EXCLUDED.units, rollover = EXCLUDED.rollover,
               granted_at = EXCLUDED.granted_at, revoked_at = EXCLUDED.revoked_at,
               version = EXCLUDED.version, event_ts = EXCLUDED.event_ts, updated_at = now()
           WHERE (meter_credits.version, meter_credits.event_ts) < (EXCLUDED.version, EXCLUDED.event_ts)
           RETURNING true""",
        r.grant_id, r.customer_id, r.user_id, r.subscription_id, r.benefit_id, r.meter_id, r.units, r.rollover,
        r.granted_at, r.revoked_at, r.version, r.event_ts,
    ) is not None


async def end_missing_subscriptions(conn: asyncpg.Connection, user_id: str, customer_id: str, active_ids: list[str],
                                    version: datetime, event_ts: datetime) -> int:
    """A customer-state snapshot lists every active subscription: one we hold as entitled but the snapshot
    omits has ended since. Older-than-snapshot rows only; its real final status arrives by its own webhook."""
    result = await conn.execute(
        """UPDATE subscriptions SET status = 'canceled', version = $4, event_ts = $5, updated_at = now()
           WHERE customer_id = $2 AND (user_id = $1 OR user_id IS NULL) AND NOT (id = ANY($3::text[]))
             AND status = ANY($6::text[]) AND (version, event_ts) < ($4, $5)""",
        user_id, customer_id, active_ids, version, event_ts, list(ENTITLED_STATUSES),
    )
    return int(result.split()[-1])


# --- reads ----------------------------------------------------------------------------------------------------
async def user_of_customer(conn: asyncpg.Connection, customer_id: str) -> str | None:
    return await conn.fetchval("SELECT user_id FROM customers WHERE id = $1", customer_id)


async def lock_user(conn: asyncpg.Connection, user_id: str) -> None:
    """Serialize the changes of one user's state (and so their change events) across transactions."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('billing.user'), hashtext($1))", user_id)


async def effective_plan(conn: asyncpg.Connection, user_id: str) -> asyncpg.Record | None:
    """The subscription that sets the user's plan (the `user_plan` view), if it entitles them. None = Free."""
    return await conn.fetchrow(
        "SELECT id, plan, status, current_period_end, cancel_at_period_end FROM user_plan "
        "WHERE user_id = $1 AND entitled",
        user_id,
    )


# --- outbox of billing.event.* ----------------------------------------------------------------------------------
async def add_outbox(conn: asyncpg.Connection, subject: str, msg_id: str, payload: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO billing_outbox (subject, msg_id, payload) VALUES ($1, $2, $3) ON CONFLICT (msg_id) DO NOTHING",
        subject, msg_id, payload,
    )


async def take_outbox(conn: asyncpg.Connection, limit: int = 100) -> list[asyncpg.Record]:
    """Pending events, locked for this transaction (another publisher skips them)."""
    return await conn.fetch(
        "SELECT id, subject, msg_id, payload FROM billing_outbox WHERE published_at IS NULL "
        "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )


async def mark_published(conn: asyncpg.Connection, ids: list[int]) -> None:
    await conn.execute("UPDATE billing_outbox SET published_at = now() WHERE id = ANY($1::bigint[])", ids)


# --- limits: the user's whole state in one round trip ------------------------------------------------------------
async def user_state(conn: asyncpg.Connection, user_id: str, now: datetime, thread_id: str | None) -> asyncpg.Record:
    """One statement: the plan-setting subscription (entitling or not: status shows a canceled one; its columns are
    NULL when the user has none), the current counters, the open reservations, and the periods in which `thread_id`
    was already seen (arrays of rows, decoded by asyncpg without a JSON round trip)."""
    return await conn.fetchrow(
        """SELECT s.id, s.plan, s.status, s.entitled, s.current_period_start, s.current_period_end,
                  s.cancel_at_period_end,
                  ARRAY(SELECT ROW(limit_name, period_start, used) FROM usage_counters
                        WHERE user_id = $1 AND period_end > $2) AS counters,
                  ARRAY(SELECT ROW(period_start, estimated_tokens, new_thread, thread_id) FROM usage_reservations
                        WHERE user_id = $1 AND settled_at IS NULL AND released_at IS NULL AND expires_at > $2
                       ) AS reservations,
                  ARRAY(SELECT period_start FROM usage_threads WHERE user_id = $1 AND thread_id = $3) AS thread_periods
           FROM (SELECT 1) AS one LEFT JOIN user_plan s ON s.user_id = $1""",
        user_id, now, thread_id or "",
    )


async def insert_reservation(conn: asyncpg.Connection, reservation_id: str, user_id: str, thread_id: str | None,
                             new_thread: bool, estimated_tokens: int, period_start: datetime,
                             expires_at: datetime) -> None:
    await conn.execute(
        """INSERT INTO usage_reservations (id, user_id, thread_id, new_thread, estimated_tokens, period_start,
                                           expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        reservation_id, user_id, thread_id, new_thread, estimated_tokens, period_start, expires_at,
    )


async def release_reservation(conn: asyncpg.Connection, reservation_id: str) -> bool:
    result = await conn.execute(
        "UPDATE usage_reservations SET released_at = now() WHERE id = $1 AND settled_at IS NULL "
        "AND released_at IS NULL",
        reservation_id,
    )
    return result.endswith(" 1")


async def customer_id_of(conn: asyncpg.Connection, user_id: str) -> str | None:
    return await conn.fetchval(
        "SELECT id FROM customers WHERE user_id = $1 ORDER BY (deleted_at IS NULL) DESC, version DESC LIMIT 1", user_id)


async def credits_granted(conn: asyncpg.Connection, user_id: str) -> int:
    """Meter credits of the user's live grants (credited per period)."""
    return int(await conn.fetchval(
        "SELECT coalesce(sum(units), 0) FROM meter_credits WHERE user_id = $1 AND revoked_at IS NULL", user_id))


# --- usage analytics (usage-sync's rollups, read only) ------------------------------------------------------------
_USAGE_SUMS = """sum(events)::bigint AS events, sum(input_tokens)::bigint AS input_tokens,
    sum(output_tokens)::bigint AS output_tokens, sum(cached_input_tokens)::bigint AS cached_input_tokens,
    sum(billable_tokens)::bigint AS billable_tokens, sum(cost_micro_usd)::bigint AS cost_micro_usd,
    sum(priced_events)::bigint AS priced_events"""


def whole_months(start: date, end: date) -> tuple[date, date]:
    """The calendar months wholly inside [start, end) as [first, last) month starts; first == last when none."""
    first = start if start.day == 1 else (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    last = end.replace(day=1)
    return (first, last) if first < last else (end, end)


def _usage_sums_query(user_id: str, start: date, end: date, by_day: bool, by_model: bool,
                      by_thread: bool) -> tuple[str, list[Any]]:
    """The user's usage from `start` to `end` (UTC days, end excluded), summed over the dimensions not asked for
    (a NULL day / model / thread_id in a row means "all"), by day, then the most tokens first. Reads the smallest
    rollup that holds the answer: by day and model without threads; whole months by thread plus the edge days when
    threads but not days are asked."""
    if by_day and by_model:  # the by-model rollup's own rows: nothing to sum
        return ("""SELECT day, model, NULL::text AS thread_id, events, input_tokens, output_tokens, cached_input_tokens,
                          billable_tokens, cost_micro_usd, priced_events
                   FROM usage_rollups_by_model WHERE user_id = $1 AND day >= $2 AND day < $3
                   ORDER BY 1, input_tokens + output_tokens DESC, 2""",
                [user_id, start, end])
    if not by_thread:
        return (f"""SELECT CASE WHEN $4 THEN day END AS day, CASE WHEN $5 THEN model END AS model,
                           NULL::text AS thread_id, {_USAGE_SUMS}
                    FROM usage_rollups_by_model WHERE user_id = $1 AND day >= $2 AND day < $3
                    GROUP BY 1, 2 ORDER BY 1, sum(input_tokens) + sum(output_tokens) DESC, 2""",
                [user_id, start, end, by_day, by_model])
    if not by_day:
        first, last = whole_months(start, end)
        return (f"""SELECT NULL::date AS day, CASE WHEN $6 THEN model END AS model, thread_id, {_USAGE_SUMS}
                    FROM (SELECT model, thread_id, events, input_tokens, output_tokens, cached_input_tokens,
                                 billable_tokens, cost_micro_usd, priced_events
                          FROM usage_rollups_by_month WHERE user_id = $1 AND month >= $2 AND month < $3
                          UNION ALL
                          SELECT model, thread_id, events, input_tokens, output_tokens, cached_input_tokens,
                                 billable_tokens, cost_micro_usd, priced_events
                          FROM usage_rollups WHERE user_id = $1 AND day >= $4 AND day < $5
                                               AND (day < $2 OR day >= $3)) edges_and_months
                    GROUP BY 2, 3 ORDER BY sum(input_tokens) + sum(output_tokens) DESC, 2, 3""",
                [user_id, first, last, start, end, by_model])
    return (f"""SELECT day, CASE WHEN $4 THEN model END AS model, thread_id, {_USAGE_SUMS}
                FROM usage_rollups WHERE user_id = $1 AND day >= $2 AND day < $3
                GROUP BY 1, 2, 3 ORDER BY 1, sum(input_tokens) + sum(output_tokens) DESC, 2, 3""",
            [user_id, start, end, by_model])


async def usage_sums(conn: asyncpg.Connection, user_id: str, start: date, end: date, *, by_day: bool,
                     by_model: bool, by_thread: bool) -> list[asyncpg.Record]:
    sql, args = _usage_sums_query(user_id, start, end, by_day, by_model, by_thread)
    return await conn.fetch(sql, *args)


async def usage_report_json(conn: asyncpg.Connection, user_id: str, start: date, end: date, *, by_day: bool,
                            by_model: bool, by_thread: bool) -> str:
    """The whole `billing.rpc.usage` reply (polar_billing_client.contracts.UsageReport), built by PostgreSQL: a year by
    day and model is ~1,500 rows, which as Python objects cost more than the query (bench/usage_query.py).
    analytics.report is the same answer from usage_sums; tests hold the two, and the raw ledger, equal."""
    sql, args = _usage_sums_query(user_id, start, end, by_day, by_model, by_thread)
    n = len(args)
    return await conn.fetchval(
        f"""WITH grouped AS ({sql}),
           empty_days AS (SELECT d::date AS day FROM generate_series(${n + 1}::date, ${n + 2}::date - 1, '1 day') d
                          WHERE ${n + 3} AND NOT EXISTS (SELECT 1 FROM grouped g WHERE g.day = d::date)),
           all_rows AS (SELECT day, model, thread_id, events, input_tokens, output_tokens, cached_input_tokens,
                               billable_tokens, cost_micro_usd, priced_events FROM grouped
                        UNION ALL  -- a day without usage: one row of zeros (it has no other row to sort beside)
                        SELECT day, NULL, NULL, 0, 0, 0, 0, 0, 0, 0 FROM empty_days)
           SELECT json_build_object(
               'from', ${n + 1}::date, 'to', ${n + 2}::date, 'currency', 'usd',
               'totals', (SELECT json_build_object(
                   'events', coalesce(sum(events), 0), 'input_tokens', coalesce(sum(input_tokens), 0),
                   'output_tokens', coalesce(sum(output_tokens), 0),
                   'cached_input_tokens', coalesce(sum(cached_input_tokens), 0),
                   'billable_tokens', coalesce(sum(billable_tokens), 0),
                   'cost_usd', CASE WHEN sum(priced_events) > 0 THEN sum(cost_micro_usd)::float8 / 1000000 END,
                   'unpriced_events', coalesce(sum(events) - sum(priced_events), 0)) FROM grouped),
               -- json_agg of whole rows: the keys are the column names, written in C, no per-key call
               'rows', coalesce((SELECT json_agg(r ORDER BY r.day, r.input_tokens + r.output_tokens DESC,
                                                 r.model, r.thread_id)
                                 FROM (SELECT day, model, thread_id, events, input_tokens, output_tokens,
                                              cached_input_tokens, billable_tokens,
                                              CASE WHEN priced_events > 0 THEN cost_micro_usd::float8 / 1000000
                                              END AS cost_usd, events - priced_events AS unpriced_events
                                       FROM all_rows) r),
                                '[]'::json))::text""",
        *args, start, end, by_day,
    )


# --- reconciliation with Polar (reconcile.py) ---------------------------------------------------------------------
RECONCILED_FIELDS = ("status", "product_id", "current_period_start", "current_period_end", "cancel_at_period_end",
                     "ends_at")


async def state_is_empty(conn: asyncpg.Connection) -> bool:
    """Nothing learnt from Polar yet: a new installation, which imports the organization first."""
    return not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM subscriptions) OR EXISTS (SELECT 1 FROM customers)")


async def subscriptions_by_id(conn: asyncpg.Connection, ids: list[str]) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        """SELECT id, user_id, status, product_id, current_period_start, current_period_end, cancel_at_period_end,
                  ends_at, version, event_ts FROM subscriptions WHERE id = ANY($1::text[])""", ids)
    return {r["id"]: r for r in rows}


async def subscription_for_repair(conn: asyncpg.Connection, subscription_id: str) -> asyncpg.Record | None:
    """The row again, inside the repair's transaction (a webhook may have changed it since the page was read)."""
    return await conn.fetchrow(
        """SELECT id, user_id, status, product_id, current_period_start, current_period_end, cancel_at_period_end,
                  ends_at, version, event_ts FROM subscriptions WHERE id = $1 FOR UPDATE""", subscription_id)


async def add_repair(conn: asyncpg.Connection, *, object: str, object_id: str, user_id: str | None,
                     fields: list[str], before: dict[str, Any] | None, after: dict[str, Any], source: str) -> int:
    return await conn.fetchval(
        """INSERT INTO reconcile_repairs (object, object_id, user_id, fields, before, after, source)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
        object, object_id, user_id, fields, before, after, source)


async def recent_repairs(conn: asyncpg.Connection, limit: int = 50) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM reconcile_repairs ORDER BY id DESC LIMIT $1", limit)


async def start_sweep(conn: asyncpg.Connection, kind: str) -> int:
    return await conn.fetchval("INSERT INTO reconcile_sweeps (kind) VALUES ($1) RETURNING id", kind)


async def finish_sweep(conn: asyncpg.Connection, sweep_id: int, *, compared: int, drifts: int, repairs: int,
                       error: str | None) -> None:
    await conn.execute(
        """UPDATE reconcile_sweeps SET finished_at = now(), compared = $2, drifts = $3, repairs = $4, error = $5
           WHERE id = $1""", sweep_id, compared, drifts, repairs, error)


async def last_sweeps(conn: asyncpg.Connection, limit: int = 10) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM reconcile_sweeps ORDER BY id DESC LIMIT $1", limit)


async def priority_users(conn: asyncpg.Connection, now: datetime, limit: int) -> list[str]:
    """Whose state matters most for access, first: a checkout we created that never produced a subscription, a
    subscription whose period ended without a renewal, users active today."""
    rows = await conn.fetch(
        """SELECT user_id FROM (
               SELECT user_id, 1 AS rank FROM checkouts
               WHERE user_id IS NOT NULL AND subscription_id IS NULL AND status IN ('open', 'confirmed')
                 AND created_at > $1::timestamptz - interval '2 days'
               UNION ALL
               SELECT user_id, 2 FROM subscriptions
               WHERE user_id IS NOT NULL AND status IN ('active', 'trialing', 'past_due') AND current_period_end < $1
               UNION ALL
               SELECT user_id, 3 FROM usage_counters
               WHERE limit_name = 'messages_per_day' AND period_end > $1) u
           GROUP BY user_id ORDER BY min(rank), user_id LIMIT $2""",
        now, limit)
    return [r["user_id"] for r in rows]


async def record_created_checkout(conn: asyncpg.Connection, checkout_id: str, user_id: str,
                                  product_id: str) -> None:
    """A checkout we created, before Polar's webhooks say anything of it: reconciliation looks at the user first
    when no subscription follows. Lowest version: any webhook of it wins."""
    await conn.execute(
        """INSERT INTO checkouts (id, user_id, product_id, status, version, event_ts)
           VALUES ($1, $2, $3, 'open', '-infinity', '-infinity') ON CONFLICT (id) DO NOTHING""",
        checkout_id, user_id, product_id)


async def endpoint_health(conn: asyncpg.Connection) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM webhook_endpoint_health")


async def set_endpoint_health(conn: asyncpg.Connection, *, endpoint_id: str | None, enabled: bool | None,
                              healthy_at: datetime | None, note: str | None) -> None:
    await conn.execute(
        """INSERT INTO webhook_endpoint_health (id, endpoint_id, enabled, last_healthy_at, checked_at, note)
           VALUES (true, $1, $2, $3, now(), $4)
           ON CONFLICT (id) DO UPDATE SET endpoint_id = EXCLUDED.endpoint_id, enabled = EXCLUDED.enabled,
               last_healthy_at = COALESCE(EXCLUDED.last_healthy_at, webhook_endpoint_health.last_healthy_at),
               checked_at = now(), note = EXCLUDED.note""",
        endpoint_id, enabled, healthy_at, note)


async def webhooks_done(conn: asyncpg.Connection, webhook_ids: list[str], retry_after: datetime,
                        max_attempts: int) -> set[str]:
    """Of these Polar webhook event ids, those not to redeliver now: applied (or skipped) already, redelivered
    since `retry_after`, or redelivered `max_attempts` times."""
    rows = await conn.fetch(
        """SELECT webhook_id AS id FROM webhook_log WHERE webhook_id = ANY($1::text[])
                                                      AND status IN ('applied', 'skipped')
           UNION SELECT event_id FROM redelivered_webhook_events
                 WHERE event_id = ANY($1::text[]) AND (redelivered_at > $2 OR attempts >= $3)""",
        webhook_ids, retry_after, max_attempts)
    return {r["id"] for r in rows}


async def mark_redelivered(conn: asyncpg.Connection, event_id: str) -> None:
    await conn.execute(
        """INSERT INTO redelivered_webhook_events (event_id) VALUES ($1)
           ON CONFLICT (event_id) DO UPDATE SET attempts = redelivered_webhook_events.attempts + 1,
                                                redelivered_at = now()""",
        event_id)


async def metered_periods(conn: asyncpg.Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    """Users with tokens in their current billing period, and our ledger's billable tokens in it: sent to Polar
    (synced) and still in the outbox (pending). Reads usage-sync's counters and ledger, never writes them."""
    return await conn.fetch(
        """SELECT c.user_id, c.period_start, c.period_end,
                  coalesce(sum(e.billable_tokens) FILTER (WHERE e.sync_status = 'synced'), 0)::bigint AS synced,
                  coalesce(sum(e.billable_tokens) FILTER (WHERE e.sync_status = 'pending'), 0)::bigint AS pending
           FROM usage_counters c
           JOIN usage_events e ON e.user_id = c.user_id AND e.occurred_at >= c.period_start
                               AND e.occurred_at < c.period_end
           WHERE c.limit_name = 'tokens_per_month' AND c.period_start <= $1 AND c.period_end > $1
           GROUP BY 1, 2, 3 ORDER BY max(c.updated_at) DESC LIMIT $2""",
        now, limit)


async def note_meter_drift(conn: asyncpg.Connection, user_id: str, period_start: datetime, ledger: int,
                           polar: int, pending: int) -> bool:
    """True the first time this user and period drift (or when the numbers changed): log it once."""
    return await conn.fetchval(
        """INSERT INTO meter_drifts (user_id, period_start, ledger_tokens, polar_tokens, pending_tokens)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (user_id, period_start) DO UPDATE SET ledger_tokens = EXCLUDED.ledger_tokens,
               polar_tokens = EXCLUDED.polar_tokens, pending_tokens = EXCLUDED.pending_tokens, found_at = now()
           WHERE (meter_drifts.ledger_tokens, meter_drifts.polar_tokens)
                 <> (EXCLUDED.ledger_tokens, EXCLUDED.polar_tokens)
           RETURNING true""",
        user_id, period_start, ledger, polar, pending) is not None


async def clear_meter_drift(conn: asyncpg.Connection, user_id: str, period_start: datetime) -> None:
    await conn.execute("DELETE FROM meter_drifts WHERE user_id = $1 AND period_start = $2", user_id, period_start)


async def meter_drifts(conn: asyncpg.Connection, limit: int = 100) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM meter_drifts ORDER BY found_at DESC LIMIT $1", limit)
