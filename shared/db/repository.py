"""The SQL of the tables every service shares: `dead_letters` (the one dead-letter store)."""
from __future__ import annotations

from datetime import datetime

import asyncpg


async def insert_dead_letter(conn: asyncpg.Connection | asyncpg.Pool, *, source: str, subject: str,
                             msg_id: str | None, stream_seq: int | None, headers: dict[str, str],
                             payload: bytes, reason: str, deliveries: int | None) -> int:
    return await conn.fetchval(
        """INSERT INTO dead_letters (source, subject, msg_id, stream_seq, headers, payload, reason, deliveries)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id""",
        source, subject, msg_id, stream_seq, headers, payload, reason, deliveries,
    )


async def list_dead_letters(conn: asyncpg.Connection, source: str | None = None,
                            limit: int = 100) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT id, source, subject, msg_id, stream_seq, reason, deliveries, created_at, replayed_at
           FROM dead_letters WHERE $1::text IS NULL OR source = $1 ORDER BY id DESC LIMIT $2""",
        source, limit,
    )


async def mark_dead_letter_replayed(conn: asyncpg.Connection, dead_letter_id: int) -> None:
    await conn.execute("UPDATE dead_letters SET replayed_at = now() WHERE id = $1", dead_letter_id)


async def get_dead_letter(conn: asyncpg.Connection, dead_letter_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM dead_letters WHERE id = $1", dead_letter_id)



# --- the Polar request budget (shared/polar_budget.py) -------------------------------------------------------------
async def take_polar_request(conn: asyncpg.Connection | asyncpg.Pool, window_start: datetime, priority: str,
                             own_cap: int, total_cap: int) -> tuple[bool, datetime | None]:
    """Count one request of `priority` (interactive | ingest | reconcile) in the window if that priority has used
    fewer than `own_cap` and everyone fewer than `total_cap`, and nobody was told to wait by a 429.
    Returns (taken, the end of a 429's wait when one is in force)."""
    row = await conn.fetchrow(
        """WITH blocked AS (SELECT until FROM polar_rate_limited WHERE until > now()),
           taken AS (
               INSERT INTO polar_request_budget AS b (window_start, interactive, ingest, reconcile)
               SELECT $1, ($2 = 'interactive')::int, ($2 = 'ingest')::int, ($2 = 'reconcile')::int
               WHERE NOT EXISTS (SELECT 1 FROM blocked) AND $3 > 0 AND $4 > 0
               ON CONFLICT (window_start) DO UPDATE SET
                   interactive = b.interactive + ($2 = 'interactive')::int,
                   ingest = b.ingest + ($2 = 'ingest')::int, reconcile = b.reconcile + ($2 = 'reconcile')::int
               WHERE CASE $2 WHEN 'interactive' THEN b.interactive WHEN 'ingest' THEN b.ingest
                             ELSE b.reconcile END < $3
                 AND b.interactive + b.ingest + b.reconcile < $4
               RETURNING 1)
           SELECT EXISTS (SELECT 1 FROM taken) AS taken, (SELECT until FROM blocked) AS until""",
        window_start, priority, own_cap, total_cap,
    )
    return bool(row["taken"]), row["until"]


async def note_polar_rate_limited(conn: asyncpg.Connection | asyncpg.Pool, until: datetime, path: str) -> None:
    await conn.execute(
        """INSERT INTO polar_rate_limited (id, until, path) VALUES (true, $1, $2)
           ON CONFLICT (id) DO UPDATE SET until = GREATEST(polar_rate_limited.until, EXCLUDED.until),
                                          path = EXCLUDED.path""",
        until, path,
    )


async def polar_requests_used(conn: asyncpg.Connection | asyncpg.Pool,
                              since: datetime) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM polar_request_budget WHERE window_start >= $1 ORDER BY window_start", since)


async def forget_polar_windows(conn: asyncpg.Connection | asyncpg.Pool, before: datetime) -> None:
    await conn.execute("DELETE FROM polar_request_budget WHERE window_start < $1", before)
