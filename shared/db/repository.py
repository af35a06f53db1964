"""The SQL of the tables every service shares: `dead_letters` (the one dead-letter store)."""
from __future__ import annotations

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

