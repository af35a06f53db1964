"""Where check, status and usage read: a streaming replica when DATABASE_READ_URL is set, else the primary.

A check tolerates the replica's milliseconds of lag (usage itself arrives asynchronously); reserve, release and every
write stay on the primary, where the user's lock is. While the replica cannot be reached (down, restarting, or a
query cancelled by a conflict with its recovery) reads go to the primary, and the replica is tried again after a
pause: a chat user's check never fails because of it. Nor do they read a replica that fell behind: while its replay
lags more than DATABASE_READ_MAX_LAG_SECONDS (looked at once a second at most) the primary answers.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from prometheus_client import Counter, Gauge

from shared.db import create_pool

log = logging.getLogger(__name__)
T = TypeVar("T")

POOL_SIZE = 10
CONNECT_TIMEOUT = 2.0  # a replica that does not answer must not hold a check for asyncpg's default 60 s
RETRY_AFTER = 5.0  # seconds the primary takes the reads after the replica failed
UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
               asyncpg.CannotConnectNowError, asyncpg.SerializationError)
LAG_EVERY = 1.0  # seconds between two looks at the replica's lag
# How far the replica's replay is behind: 0 when it replayed all it received, else the age of the last transaction
# it replayed (an upper bound: after a quiet spell on the primary it overstates, which only sends reads to the
# primary), or infinity when it replayed none since it started.
LAG_SQL = """SELECT CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
                         ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,
                                       'Infinity') END"""
ON_PRIMARY = Counter("billing_replica_reads_on_primary_total",
                     "Reads meant for the replica (DATABASE_READ_URL) that the primary answered instead, by why",
                     ["reason"])
for _reason in ("unreachable", "lagging"):
    ON_PRIMARY.labels(_reason)
LAG = Gauge("billing_replica_lag_seconds", "How far the read replica's replay is behind the primary (last look)")


class Reads:
    def __init__(self, primary: asyncpg.Pool, replica: asyncpg.Pool | None = None, max_lag: float = 5.0) -> None:
        self.primary = primary
        self.replica = replica
        self.max_lag = max_lag
        self.lag = 0.0
        self._lag_seen_at = float("-inf")
        self._replica_down_until = 0.0

    @classmethod
    async def open(cls, primary: asyncpg.Pool, read_url: str | None, max_lag: float) -> Reads:
        # min_size=0: a replica that is down when billing starts does not stop it from starting.
        replica = await create_pool(read_url, min_size=0, max_size=POOL_SIZE, name="billing-reads",
                                    connect_timeout=CONNECT_TIMEOUT) if read_url else None
        return cls(primary, replica, max_lag)

    async def run(self, read: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`read` on a replica connection, or on the primary's (it may run twice: it must only read)."""
        reason = "unreachable"
        if self.replica is not None and time.monotonic() >= self._replica_down_until:
            reason = "lagging"
            look = time.monotonic() - self._lag_seen_at >= LAG_EVERY
            if look or self.lag <= self.max_lag:  # known to be behind: no connection until the next look
                try:
                    async with self.replica.acquire() as conn:
                        if look:
                            self._lag_seen_at = time.monotonic()
                            self.lag = float(await conn.fetchval(LAG_SQL))
                            LAG.set(self.lag)
                        if self.lag <= self.max_lag:
                            return await read(conn)
                except UNREACHABLE as exc:
                    reason = "unreachable"
                    self._replica_down_until = time.monotonic() + RETRY_AFTER
                    log.warning("reads.replica_unavailable", extra={"error": type(exc).__name__,
                                                                    "retry_in_s": RETRY_AFTER})
        if self.replica is not None:
            ON_PRIMARY.labels(reason).inc()
        async with self.primary.acquire() as conn:
            return await read(conn)

    async def close(self) -> None:
        if self.replica is not None:
            await self.replica.close()
