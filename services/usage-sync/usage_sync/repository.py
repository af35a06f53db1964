"""All of usage-sync's SQL. A batch goes in with `unnest`, written by one statement (record_batch).

Usage-sync owns usage_events (the ledger, also the outbox to Polar, partitioned by month of occurred_at),
usage_event_ids (what deduplicates it), usage_counters, usage_threads, usage_thresholds and the rollups; it settles
billing's usage_reservations in the ledger's transaction (docs/architecture.md) and prunes the closed ones past
retention."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from shared.periods import Period


async def paid_periods(conn: asyncpg.Connection, user_ids: Sequence[str]
                       ) -> dict[str, tuple[str, Period | None]]:
    """The plan of each user whose plan-setting subscription (billing's `user_plan` view, read only) entitles them,
    and its current billing period (None when the row has no period dates: the calendar month applies)."""
    rows = await conn.fetch(
        """SELECT user_id, plan, current_period_start, current_period_end FROM user_plan
           WHERE user_id = ANY($1::text[]) AND entitled""",
        list(user_ids),
    )
    return {r["user_id"]: (r["plan"], (r["current_period_start"], r["current_period_end"])
                           if r["current_period_start"] and r["current_period_end"] else None) for r in rows}


_SUMS = ("events", "input_tokens", "output_tokens", "cached_input_tokens", "billable_tokens", "cost_micro_usd",
         "priced_events")
_ADD = ", ".join(f"{c} = r.{c} + EXCLUDED.{c}" for c in _SUMS)  # a constant list of our own column names
_ROLLED = "count(*), sum(i), sum(o), sum(c), sum(b), sum(coalesce(cost, 0)), count(cost)"


@dataclass(frozen=True)
class Written:
    duplicates: list[str]  # ids already recorded (redelivered or republished): nothing of theirs was written
    settled: int  # reservations settled
    crossings: int  # threshold crossings stored for the first time


# One statement for the whole batch. Its parts run on one snapshot, so each reads what an earlier part wrote only
# through RETURNING: `fresh` (the ids the dedup table took) decides which events are new; only new events reach the
# ledger, the counters, the rollups and the threads, and only threads that are new to the table add to
# threads_per_month. Every upsert takes its rows in key order, so two batches at once lock rows in the same order.
# Messages count in the event's UTC day (shared/periods.day_of); tokens and threads in the billing period passed
# (p, an index into the period arrays $16/$17).
_RECORD_BATCH = f"""
WITH batch AS (
    SELECT e.*, ($16::timestamptz[])[e.p] AS period_start, ($17::timestamptz[])[e.p] AS period_end,
           (e.at AT TIME ZONE 'UTC')::date AS day
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bool[],
                $9::bigint[], $10::text[], $11::timestamptz[], $12::bigint[], $13::text[], $14::int[], $15::bool[])
         AS e(id, u, t, m, i, o, c, k, b, r, at, cost, pv, p, known)),
fresh AS (
    INSERT INTO usage_event_ids (event_id, occurred_at) SELECT id, at FROM batch
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id),
new AS (
    SELECT batch.* FROM batch JOIN fresh ON fresh.event_id = batch.id),
ledger AS (
    INSERT INTO usage_events (event_id, user_id, thread_id, model, input_tokens, output_tokens, cached_input_tokens,
                              custom_key, billable_tokens, reservation_id, occurred_at, cost_micro_usd, price_version)
    SELECT id, u, t, m, i, o, c, k, b, r, at, cost, pv FROM new ORDER BY id),
threads AS (
    INSERT INTO usage_threads (user_id, period_start, thread_id)
    SELECT DISTINCT u, period_start, t FROM new WHERE NOT known ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING
    RETURNING user_id, period_start),
deltas AS (
    SELECT u, 'tokens_per_month' AS name, period_start AS s, period_end AS e, sum(b) AS v
    FROM new WHERE b > 0 GROUP BY 1, 3, 4
    UNION ALL
    SELECT u, 'messages_per_day', day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC', count(*)
    FROM new GROUP BY 1, day
    UNION ALL
    SELECT threads.user_id, 'threads_per_month', threads.period_start, periods.period_end, count(*)
    FROM threads JOIN (SELECT DISTINCT u, period_start, period_end FROM new) periods
         ON periods.u = threads.user_id AND periods.period_start = threads.period_start
    GROUP BY 1, 3, 4),
counted AS (
    INSERT INTO usage_counters AS uc (user_id, limit_name, period_start, period_end, used)
    SELECT u, name, s, e, sum(v) FROM deltas GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3
    ON CONFLICT (user_id, limit_name, period_start)
    DO UPDATE SET used = uc.used + EXCLUDED.used, updated_at = now()
    RETURNING user_id, limit_name, period_start, period_end, used),
plans AS (
    SELECT * FROM unnest($18::text[], $19::text[]) AS p(u, plan)),
limits AS (
    SELECT * FROM unnest($20::text[], $21::text[], $22::bigint[]) AS l(plan, name, value) WHERE value > 0),
crossed AS (
    INSERT INTO usage_thresholds (user_id, limit_name, period_start, percent, used, limit_value, resets_at)
    SELECT counted.user_id, counted.limit_name, counted.period_start, pct, counted.used, limits.value,
           counted.period_end
    FROM counted
    LEFT JOIN plans ON plans.u = counted.user_id
    JOIN limits ON limits.plan = coalesce(plans.plan, 'free') AND limits.name = counted.limit_name
    CROSS JOIN (VALUES (80), (100)) AS thresholds(pct)
    WHERE counted.used * 100 >= pct * limits.value
    ORDER BY 1, 2, 3, 4
    ON CONFLICT DO NOTHING
    RETURNING 1),
fine AS (
    INSERT INTO usage_rollups AS r
    SELECT u, day, m, t, {_ROLLED} FROM new GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (user_id, day, model, thread_id) DO UPDATE SET {_ADD}),
by_model AS (
    INSERT INTO usage_rollups_by_model AS r
    SELECT u, day, m, {_ROLLED} FROM new GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (user_id, day, model) DO UPDATE SET {_ADD}),
by_month AS (
    INSERT INTO usage_rollups_by_month AS r
    SELECT u, date_trunc('month', day)::date, m, t, {_ROLLED} FROM new GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (user_id, month, model, thread_id) DO UPDATE SET {_ADD}),
settled AS (
    UPDATE usage_reservations SET settled_at = now()
    WHERE id IN (SELECT r FROM new WHERE r IS NOT NULL) AND settled_at IS NULL AND released_at IS NULL
    RETURNING 1)
SELECT ARRAY(SELECT id FROM batch WHERE id NOT IN (SELECT event_id FROM fresh)) AS duplicates,
       (SELECT count(*) FROM settled) AS settled, (SELECT count(*) FROM crossed) AS crossings"""


async def record_batch(conn: asyncpg.Connection, rows: Sequence[tuple], periods: Sequence[Period],
                       plans: dict[str, str], limits: Sequence[tuple[str, str, int]]) -> Written:
    """rows: (event_id, user_id, thread_id, model, input, output, cached, custom_key, billable, reservation_id,
    occurred_at, cost_micro_usd, price_version, period (1-based index into `periods`), thread already stored), one
    per distinct event id, sorted by id. `plans`: the plan of each paid user (others are on Free). `limits`: (plan,
    limit name, limit: 0 for unlimited) of every plan, for the threshold crossings.

    The ledger's own key holds occurred_at (its partition key), so it cannot tell a repeat whose occurred_at differs:
    usage_event_ids, keyed by the id alone, decides."""
    cols = list(zip(*rows, strict=True))
    users = sorted(plans)
    row = await conn.fetchrow(
        _RECORD_BATCH, *cols, [p[0] for p in periods], [p[1] for p in periods],
        users, [plans[u] for u in users], *(list(c) for c in zip(*limits, strict=True)))
    return Written(duplicates=row["duplicates"], settled=row["settled"], crossings=row["crossings"])


async def take_unpublished_thresholds(conn: asyncpg.Connection, limit: int = 200) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM usage_thresholds WHERE published_at IS NULL ORDER BY created_at LIMIT $1 "
        "FOR UPDATE SKIP LOCKED", limit)


async def mark_thresholds_published(conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> None:
    await conn.execute(
        """UPDATE usage_thresholds t SET published_at = now()
           FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int[]) AS k(u, l, p, pc)
           WHERE t.user_id = k.u AND t.limit_name = k.l AND t.period_start = k.p AND t.percent = k.pc""",
        [r["user_id"] for r in rows], [r["limit_name"] for r in rows], [r["period_start"] for r in rows],
        [r["percent"] for r in rows],
    )


# --- the outbox to Polar --------------------------------------------------------------------------------------
async def take_pending(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """Unsynced rows, locked for this transaction: another usage-sync process skips them."""
    return await conn.fetch(
        """SELECT event_id, user_id, model, input_tokens, output_tokens, cached_input_tokens, occurred_at, custom_key,
                  cost_micro_usd
           FROM usage_events WHERE sync_status = 'pending'
           ORDER BY received_at, event_id LIMIT $1 FOR UPDATE SKIP LOCKED""",
        limit,
    )


async def mark_synced(conn: asyncpg.Connection, events: Sequence[tuple[str, datetime]]) -> None:
    """(event_id, occurred_at) of each row sent: with the occurred_at values the statement touches only their months
    (the partition key), not every month's index."""
    await conn.execute(
        "UPDATE usage_events SET sync_status = 'synced', synced_at = now(), sync_attempts = sync_attempts + 1 "
        "WHERE event_id = ANY($1::text[]) AND occurred_at = ANY($2::timestamptz[])",
        [e[0] for e in events], [e[1] for e in events],
    )


async def quarantine(conn: asyncpg.Connection, event_id: str, reason: str) -> None:
    await conn.execute(
        "UPDATE usage_events SET sync_status = 'quarantined', sync_error = $2, sync_attempts = sync_attempts + 1 "
        "WHERE event_id = $1",
        event_id, reason[:2000],
    )


async def requeue_quarantined(conn: asyncpg.Connection, event_ids: Sequence[str] | None) -> int:
    """Operator's re-send after a fix: quarantined rows (all, or those named) become pending again."""
    result = await conn.execute(
        "UPDATE usage_events SET sync_status = 'pending', sync_error = NULL "
        "WHERE sync_status = 'quarantined' AND ($1::text[] IS NULL OR event_id = ANY($1::text[]))",
        list(event_ids) if event_ids else None,
    )
    return int(result.split()[-1])


async def outbox_lag(conn: asyncpg.Connection) -> tuple[int, float]:
    row = await conn.fetchrow(
        "SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(received_at)), 0) AS age "
        "FROM usage_events WHERE sync_status = 'pending'"
    )
    return int(row["n"]), float(row["age"])


async def list_quarantined(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT event_id, user_id, sync_error FROM usage_events "
                            "WHERE sync_status = 'quarantined' ORDER BY received_at")


async def recent_events(conn: asyncpg.Connection, user_id: str, limit: int = 10) -> list[asyncpg.Record]:
    """The user's latest ledger rows, newest first (the operator's view of one user)."""
    return await conn.fetch(
        "SELECT event_id, occurred_at, model, thread_id, input_tokens, output_tokens, billable_tokens, sync_status "
        "FROM usage_events WHERE user_id = $1 ORDER BY occurred_at DESC LIMIT $2", user_id, limit)


# --- the ledger's months and retention (retention.py) ------------------------------------------------------------
# Partition names and bounds are built from dates only (never from input), and quoted.
_MONTH_NAME = re.compile(r"^usage_events_p(\d{4})(\d{2})$")
MAINTENANCE_LOCK = 0x7573_6167  # "usag": one maintenance run at a time across usage-sync processes


@dataclass(frozen=True)
class LedgerMonth:
    month: date  # the first day of the UTC month it holds
    attached: bool  # False: detached by an earlier run that stopped before dropping it
    detach_pending: bool  # a DETACH ... CONCURRENTLY that was interrupted


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _table(month: date) -> str:
    return f'"usage_events_p{month.year:04d}{month.month:02d}"'


def _bound(month: date) -> str:
    return f"'{month.isoformat()} 00:00:00+00'"


async def ledger_months(conn: asyncpg.Connection) -> list[LedgerMonth]:
    """Every table named like a ledger month, attached or left detached, oldest first. Others (a partition created by
    hand, or the migration's for rows outside years 1-9999) are not ours to create or drop."""
    rows = await conn.fetch(
        """SELECT c.relname, i.inhparent IS NOT NULL AS attached, coalesce(i.inhdetachpending, false) AS pending,
                  c.relispartition
           FROM pg_class c
           LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = 'usage_events'::regclass
           WHERE c.relkind = 'r' AND c.relname ~ '^usage_events_p[0-9]{6}$'
             AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'usage_events'::regclass)""")
    out = []
    for r in rows:
        m = _MONTH_NAME.match(r["relname"])
        if m is None or not 1 <= int(m.group(2)) <= 12 or (r["relispartition"] and not r["attached"]):
            continue
        out.append(LedgerMonth(date(int(m.group(1)), int(m.group(2)), 1), r["attached"], r["pending"]))
    return sorted(out, key=lambda lm: lm.month)


async def create_month(conn: asyncpg.Connection, month: date, lock_timeout: str) -> None:
    """A new month, empty: created apart and attached, which locks the ledger only against other schema changes
    (CREATE TABLE ... PARTITION OF would block every insert and read while it waits for its lock)."""
    async with conn.transaction():
        await conn.execute("SELECT set_config('lock_timeout', $1, true)", lock_timeout)
        await conn.execute(f"CREATE TABLE {_table(month)} (LIKE usage_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        await conn.execute(f"ALTER TABLE usage_events ATTACH PARTITION {_table(month)} "
                           f"FOR VALUES FROM ({_bound(month)}) TO ({_bound(next_month(month))})")


async def detach_month(conn: asyncpg.Connection, month: date, *, finalize: bool = False) -> None:
    """CONCURRENTLY: readers and writers of the other months never wait for it. Not inside a transaction."""
    await conn.execute(f"ALTER TABLE usage_events DETACH PARTITION {_table(month)} "
                       + ("FINALIZE" if finalize else "CONCURRENTLY"))


async def pending_in_month(conn: asyncpg.Connection, month: date) -> int:
    return await conn.fetchval(f"SELECT count(*) FROM {_table(month)} WHERE sync_status = 'pending'")


async def forget_event_ids(conn: asyncpg.Connection, month: date, after: str, limit: int) -> tuple[int, str | None]:
    """Drop from usage_event_ids the ids of a detached month's rows, `limit` rows from the id `after` on (its key
    order). Returns (ids deleted, the last id looked at: None when the month is done)."""
    row = await conn.fetchrow(
        f"""WITH chunk AS (SELECT event_id, occurred_at FROM {_table(month)}
                           WHERE event_id > $1 ORDER BY event_id LIMIT $2),
                gone AS (DELETE FROM usage_event_ids i USING chunk
                         WHERE i.event_id = chunk.event_id AND i.occurred_at = chunk.occurred_at RETURNING 1)
            SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM chunk) AS seen,
                   (SELECT max(event_id) FROM chunk) AS last""",
        after, limit)
    return row["deleted"], row["last"] if row["seen"] == limit else None


async def drop_month(conn: asyncpg.Connection, month: date) -> None:
    """A detached month only: it is a table of its own by then, and dropping it locks nothing else."""
    await conn.execute(f"DROP TABLE {_table(month)}")


async def try_lock_maintenance(conn: asyncpg.Connection) -> bool:
    return await conn.fetchval("SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK)


async def unlock_maintenance(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK)


async def prune_periods(conn: asyncpg.Connection, cut: datetime, limit: int) -> int:
    """Up to `limit` counters of periods that ended at or before `cut`, with the period's threads and threshold
    crossings (one statement: a period goes whole). Returns the counters deleted. No event may count in such a
    period any more (it would be older than the cut), so nothing writes them while they go."""
    return await conn.fetchval(
        """WITH old AS (SELECT user_id, limit_name, period_start FROM usage_counters
                        WHERE period_end <= $1 ORDER BY period_end LIMIT $2),
                threads AS (DELETE FROM usage_threads t USING old
                            WHERE old.limit_name = 'threads_per_month' AND t.user_id = old.user_id
                              AND t.period_start = old.period_start),
                crossings AS (DELETE FROM usage_thresholds h USING old
                              WHERE h.user_id = old.user_id AND h.limit_name = old.limit_name
                                AND h.period_start = old.period_start),
                gone AS (DELETE FROM usage_counters c USING old
                         WHERE c.user_id = old.user_id AND c.limit_name = old.limit_name
                           AND c.period_start = old.period_start RETURNING 1)
           SELECT count(*) FROM gone""",
        cut, limit)


async def prune_reservations(conn: asyncpg.Connection, cut: datetime, limit: int) -> int:
    """Up to `limit` reservations that expired before `cut`: closed (settled, released or expired) long since; a
    reservation lives at most an hour, so its period is the one of that moment."""
    result = await conn.execute(
        """DELETE FROM usage_reservations WHERE id = ANY(ARRAY(
               SELECT id FROM usage_reservations WHERE expires_at < $1 ORDER BY expires_at LIMIT $2))""",
        cut, limit)
    return int(result.split()[-1])


ROLLUPS = {"usage_rollups": "day", "usage_rollups_by_model": "day", "usage_rollups_by_month": "month"}


async def prune_rollup(conn: asyncpg.Connection, table: str, before: date, limit: int) -> int:
    """Up to `limit` rows of one rollup (a key of ROLLUPS) for days (or months) before `before`."""
    column = ROLLUPS[table]  # our own constant names: nothing else reaches the statement's text
    result = await conn.execute(
        f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {column} < $1 LIMIT $2))",
        before, limit)
    return int(result.split()[-1])
