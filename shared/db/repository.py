"""The SQL of the tables every service shares: `dead_letters` (the one dead-letter store)."""
from __future__ import annotations

from typing import Any

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
        """SELECT id, source, subject, msg_id, stream_seq, reason, deliveries, created_at FROM dead_letters
           WHERE $1::text IS NULL OR source = $1 ORDER BY id DESC LIMIT $2""",
        source, limit,
    )


async def get_dead_letter(conn: asyncpg.Connection, dead_letter_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM dead_letters WHERE id = $1", dead_letter_id)


def as_row(record: asyncpg.Record) -> dict[str, Any]:
    return dict(record)
