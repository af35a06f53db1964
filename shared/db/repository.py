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


async def prune_dead_letters(conn: asyncpg.Connection, before: datetime, limit: int) -> int:
    """Up to `limit` dead letters stored before `before` (oldest first); returns how many went."""
    result = await conn.execute(
        """DELETE FROM dead_letters WHERE id = ANY(ARRAY(
               SELECT id FROM dead_letters WHERE created_at < $1 ORDER BY created_at LIMIT $2))""",
        before, limit)
    return int(result.split()[-1])



# --- the Polar request budget (shared/polar_budget.py) -------------------------------------------------------------
async def take_polar_request(conn: asyncpg.Connection, window_seconds: float, priority: str, own_cap: int,
                             total_cap: int) -> tuple[bool, float]:
    """Count one request of `priority` (interactive | ingest | reconcile) if, over the last window, that priority
    sent fewer than `own_cap` and everyone fewer than `total_cap`, and no 429 is in force. Returns (taken, seconds
    until a retry may succeed). One deployment-wide lock: two processes never both take the last unit."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('polar.budget'))")
        row = await conn.fetchrow(
            """WITH recent AS (SELECT at, priority FROM polar_requests
                               WHERE at > clock_timestamp() - make_interval(secs => $1))
               SELECT (SELECT until FROM polar_rate_limited WHERE until > clock_timestamp()) AS until,
                      count(*) FILTER (WHERE priority = $2) AS own, count(*) AS total,
                      (SELECT at FROM recent WHERE priority = $2 ORDER BY at DESC OFFSET $3 - 1 LIMIT 1) AS own_nth,
                      (SELECT at FROM recent ORDER BY at DESC OFFSET $4 - 1 LIMIT 1) AS total_nth,
                      clock_timestamp() AS now
               FROM recent""",
            window_seconds, priority, own_cap, total_cap)
        now = row["now"]
        if row["until"] is not None:
            return False, (row["until"] - now).total_seconds()
        if row["own"] < own_cap and row["total"] < total_cap:
            await conn.execute("DELETE FROM polar_requests WHERE at < $1::timestamptz - make_interval(secs => $2)",
                               now, window_seconds)  # what nobody counts any more: a window's worth at most
            await conn.execute("INSERT INTO polar_requests (priority) VALUES ($1)", priority)
            return True, 0.0
        # The unit that frees first: when the oldest request still counted against the cap that binds leaves.
        oldest = [t for t, full in ((row["own_nth"], row["own"] >= own_cap),
                                    (row["total_nth"], row["total"] >= total_cap)) if full and t is not None]
        return False, max(0.01, max((t - now).total_seconds() + window_seconds for t in oldest) if oldest else 0.1)


async def note_polar_rate_limited(conn: asyncpg.Connection | asyncpg.Pool, until: datetime, path: str) -> None:
    await conn.execute(
        """INSERT INTO polar_rate_limited (id, until, path) VALUES (true, $1, $2)
           ON CONFLICT (id) DO UPDATE SET until = GREATEST(polar_rate_limited.until, EXCLUDED.until),
                                          path = EXCLUDED.path""",
        until, path,
    )
