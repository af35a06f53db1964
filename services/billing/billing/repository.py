"""All of billing's SQL. Parameterized; table and column names below are constants of this module, never input."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from shared.plans import ENTITLED_STATUSES, plan_rank_sql

PLAN_RANK = plan_rank_sql()


# --- webhook log ----------------------------------------------------------------------------------------------
async def claim_webhook(conn: asyncpg.Connection, webhook_id: str, event_type: str, event_ts: datetime | None,
                        payload: dict[str, Any], *, replay: bool = False) -> bool:
    """Take the webhook for applying in this transaction. False: it was applied (or skipped) already.

    A `failed` row is taken again (a redelivery or a replay after the fault was fixed); `replay=True` takes any row.
    Concurrent deliveries of one id serialize on the primary key: the second sees the first's committed row.
    """
    row = await conn.fetchrow(
        """INSERT INTO webhook_log (webhook_id, type, event_ts, payload, status, attempts)
           VALUES ($1, $2, $3, $4, 'received', 1)
           ON CONFLICT (webhook_id) DO UPDATE
               SET attempts = webhook_log.attempts + 1, status = 'received', error = NULL,
                   payload = EXCLUDED.payload, event_ts = EXCLUDED.event_ts
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
        webhook_id, event_type, payload, attempts, error[:2000],
    )


async def get_webhook(conn: asyncpg.Connection, webhook_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM webhook_log WHERE webhook_id = $1", webhook_id)


async def failed_webhook_ids(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT webhook_id FROM webhook_log WHERE status = 'failed' ORDER BY received_at")
    return [r["webhook_id"] for r in rows]


async def delete_webhooks_before(conn: asyncpg.Connection, cutoff: datetime) -> int:
    result = await conn.execute("DELETE FROM webhook_log WHERE received_at < $1", cutoff)
    return int(result.split()[-1])


# --- monotonic upserts ----------------------------------------------------------------------------------------
async def _upsert(conn: asyncpg.Connection, table: str, row: dict[str, Any], *, key: str = "id",
                  keep: tuple[str, ...] = ()) -> bool:
    """Insert, or update only if (version, event_ts) is newer than the stored pair. True if the row changed.

    `keep` columns keep their stored value when the incoming one is NULL (e.g. a user id learnt earlier).
    """
    cols = list(row)
    sets = ", ".join(
        f"{c} = COALESCE(EXCLUDED.{c}, {table}.{c})" if c in keep else f"{c} = EXCLUDED.{c}"
        for c in cols if c != key
    )
    sql = (
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(f'${i}' for i in range(1, len(cols) + 1))}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {sets}, updated_at = now() "
        f"WHERE ({table}.version, {table}.event_ts) < (EXCLUDED.version, EXCLUDED.event_ts) RETURNING {key}"
    )
    return await conn.fetchval(sql, *row.values()) is not None


async def upsert_customer(conn: asyncpg.Connection, row: dict[str, Any]) -> bool:
    return await _upsert(conn, "customers", row, keep=("user_id",))


async def upsert_subscription(conn: asyncpg.Connection, row: dict[str, Any]) -> bool:
    return await _upsert(conn, "subscriptions", row, keep=("user_id", "checkout_id"))


async def upsert_checkout(conn: asyncpg.Connection, row: dict[str, Any]) -> bool:
    return await _upsert(conn, "checkouts", row, keep=("user_id", "subscription_id"))


async def upsert_order(conn: asyncpg.Connection, row: dict[str, Any]) -> bool:
    return await _upsert(conn, "orders", row, keep=("user_id",))


async def upsert_meter_credit(conn: asyncpg.Connection, row: dict[str, Any]) -> bool:
    return await _upsert(conn, "meter_credits", row, key="grant_id", keep=("user_id",))


async def end_missing_subscriptions(conn: asyncpg.Connection, user_id: str, customer_id: str, active_ids: list[str],
                                    version: datetime, event_ts: datetime) -> int:
    """A customer-state snapshot lists every active subscription: one we hold as entitled but the snapshot
    omits has ended since. Older-than-snapshot rows only; its real final status arrives by its own webhook."""
    result = await conn.execute(
        f"""UPDATE subscriptions SET status = 'canceled', version = $4, event_ts = $5, updated_at = now()
            WHERE customer_id = $2 AND (user_id = $1 OR user_id IS NULL) AND NOT (id = ANY($3::text[]))
              AND status IN {ENTITLED_STATUSES!r} AND (version, event_ts) < ($4, $5)""",
        user_id, customer_id, active_ids, version, event_ts,
    )
    return int(result.split()[-1])


# --- reads ----------------------------------------------------------------------------------------------------
async def user_of_customer(conn: asyncpg.Connection, customer_id: str) -> str | None:
    return await conn.fetchval("SELECT user_id FROM customers WHERE id = $1", customer_id)


async def lock_user(conn: asyncpg.Connection, user_id: str) -> None:
    """Serialize the changes of one user's state (and so their change events) across transactions."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('billing.user'), hashtext($1))", user_id)


async def effective_plan(conn: asyncpg.Connection, user_id: str) -> asyncpg.Record | None:
    """The subscription that sets the user's plan: the best-ranked entitled one. None = Free."""
    return await conn.fetchrow(
        f"""SELECT id, plan, status, current_period_end, cancel_at_period_end FROM subscriptions
            WHERE user_id = $1 AND plan IS NOT NULL AND status IN {ENTITLED_STATUSES!r}
            ORDER BY {PLAN_RANK} DESC, version DESC LIMIT 1""",
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
    """The plan-setting subscription, the current counters, the open reservations, and the periods in which
    `thread_id` was already seen: one statement."""
    return await conn.fetchrow(
        f"""WITH sub AS (
                SELECT id, plan, status, current_period_start, current_period_end, cancel_at_period_end
                FROM subscriptions WHERE user_id = $1 AND plan IS NOT NULL
                ORDER BY (status IN {ENTITLED_STATUSES!r}) DESC, {PLAN_RANK} DESC, version DESC LIMIT 1)
            SELECT
              (SELECT to_jsonb(sub) FROM sub) AS sub,
              (SELECT coalesce(jsonb_agg(jsonb_build_array(limit_name, period_start, used)), '[]'::jsonb)
                 FROM usage_counters WHERE user_id = $1 AND period_end > $2) AS counters,
              (SELECT coalesce(jsonb_agg(jsonb_build_array(period_start, estimated_tokens, new_thread, thread_id)),
                               '[]'::jsonb)
                 FROM usage_reservations WHERE user_id = $1 AND settled_at IS NULL AND released_at IS NULL
                  AND expires_at > $2) AS reservations,
              (SELECT coalesce(jsonb_agg(period_start), '[]'::jsonb)
                 FROM usage_threads WHERE user_id = $1 AND thread_id = $3) AS thread_periods""",
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
