"""Database access: the asyncpg pool every service uses, and the migration runner (`shared.db.migrate`)."""
from __future__ import annotations

import json

import asyncpg


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to undo when a connection goes back to the pool: no service uses LISTEN, session advisory locks
    (only `pg_advisory_xact_lock`), cursors outside a transaction or SET. asyncpg still rolls back a transaction
    left open. Its default reset is one more round trip on every request (measured: bench/check_latency.py)."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10, name: str = "service",
                      connect_timeout: float = 60) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=connect_timeout,
        init=_init_connection,
        reset=_keep_session,
        server_settings={"application_name": name, "timezone": "UTC"},
        command_timeout=30,
    )


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection with the pool's codecs (for commands and tests)."""
    conn = await asyncpg.connect(dsn, server_settings={"timezone": "UTC"})
    await _init_connection(conn)
    return conn
