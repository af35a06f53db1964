"""The ledger's months and its retention: a loop listed in app.py, run at start and then daily. No SQL here.

- The cut is now − USAGE_LEDGER_RETENTION_DAYS. Months are kept from the cut's month to MONTHS_AHEAD after the
  current one; the edge (handlers.py) refuses an event before the cut or more than MAX_AHEAD ahead, so every event
  it lets in has its month.
- A month that ended at or before the cut is detached CONCURRENTLY (nobody reading or writing the other months waits
  for it), its ids are removed from usage_event_ids, and it is dropped. A run that stops half way leaves a detach
  pending or a detached month; the next run finishes it.
- Counters of periods that ended at or before the cut go, with their threads and threshold crossings; reservations
  that expired before it; rollups of the days and months before it; dead letters stored before it, whichever
  consumer wrote them (a usage event that old would be refused again, a webhook that old lose to what came since,
  and a flood of refused replays must not grow the store without end).
- With several usage-sync processes one runs it at a time (an advisory lock); the others skip it that day.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial

import asyncpg
from prometheus_client import Counter, Gauge

from shared.db import repository as shared_repo

from . import repository as repo
from .runtime import UsageSyncRuntime

log = logging.getLogger(__name__)

EVERY_SECONDS = 86_400.0
RETRY_SECONDS = 300.0  # after a failure, or a lock not granted in LOCK_TIMEOUT
MONTHS_AHEAD = 2  # created ahead of the current month: a missed day or two of runs never leaves an event homeless
MAX_AHEAD = timedelta(days=31)  # the edge refuses events further ahead than this (well inside the months created)
CHUNK = 5000  # rows per delete statement: no transaction holds many locks or much WAL
LOCK_TIMEOUT = "2s"  # attaching a month waits at most this for its lock, so it never queues ingest behind it

CREATED = Counter("usage_ledger_months_created_total", "Ledger months (partitions) created ahead")
DROPPED = Counter("usage_ledger_months_dropped_total", "Ledger months dropped after the retention period")
DROPPED_UNSYNCED = Counter("usage_ledger_dropped_unsynced_total",
                           "Ledger rows still unsynced to Polar when their month passed retention")
PRUNED = Counter("usage_retention_pruned_rows_total", "Rows deleted after the retention period, by table", ["table"])
LAST_RUN = Gauge("usage_retention_last_run_timestamp_seconds", "When the ledger's retention last completed")


@dataclass
class Maintained:
    cut: datetime
    created: list[date] = field(default_factory=list)
    dropped: list[date] = field(default_factory=list)
    pruned: dict[str, int] = field(default_factory=dict)  # table → rows deleted


def cut_of(now: datetime, retention_days: int) -> datetime:
    """Events that occurred before this are past retention."""
    return now - timedelta(days=retention_days)


def month_of(at: datetime) -> date:
    at = at.astimezone(UTC)
    return date(at.year, at.month, 1)


async def run_once(conn: asyncpg.Connection, now: datetime, retention_days: int) -> Maintained | None:
    """One run; None when another process holds the run. `conn` must not be in a transaction (a concurrent detach
    cannot run inside one)."""
    if not await repo.try_lock_maintenance(conn):
        log.info("ledger.retention_skipped", extra={"reason": "another usage-sync process is running it"})
        return None
    try:
        return await _run(conn, now, cut_of(now, retention_days))
    finally:
        await repo.unlock_maintenance(conn)


async def _run(conn: asyncpg.Connection, now: datetime, cut: datetime) -> Maintained:
    done = Maintained(cut)
    first = month_of(cut)
    last = month_of(now)
    for _ in range(MONTHS_AHEAD):
        last = repo.next_month(last)
    months = await repo.ledger_months(conn)
    have = {m.month for m in months}
    month = first
    while month <= last:
        if month not in have:
            await repo.create_month(conn, month, LOCK_TIMEOUT)
            CREATED.inc()
            done.created.append(month)
            log.info("ledger.month_created", extra={"month": month.isoformat()})
        month = repo.next_month(month)
    for m in months:
        if m.month >= first:  # it ends after the cut: kept
            continue
        if m.detach_pending:
            await repo.detach_month(conn, m.month, finalize=True)
        elif m.attached:
            await repo.detach_month(conn, m.month)
        await _drop(conn, m.month)
        done.dropped.append(m.month)

    done.pruned["usage_counters"] = await _all(partial(repo.prune_periods, conn, cut, CHUNK))
    done.pruned["usage_reservations"] = await _all(partial(repo.prune_reservations, conn, cut, CHUNK))
    done.pruned["dead_letters"] = await _all(partial(shared_repo.prune_dead_letters, conn, cut, CHUNK))
    # Days (months) that ended at or before the cut; the day (month) the cut falls in stays whole.
    before_day = cut.astimezone(UTC).date()
    for table, column in repo.ROLLUPS.items():
        done.pruned[table] = await _all(partial(repo.prune_rollup, conn, table,
                                                first if column == "month" else before_day, CHUNK))
    for table, n in done.pruned.items():
        PRUNED.labels(table).inc(n)
    log.info("ledger.retention_done", extra={"cut": cut.isoformat(), "months_created": len(done.created),
                                             "months_dropped": [m.isoformat() for m in done.dropped],
                                             "pruned": done.pruned})
    return done


async def _drop(conn: asyncpg.Connection, month: date) -> None:
    """A detached month: its ids forgotten (they all occurred before the cut), then the table itself."""
    unsynced = await repo.pending_in_month(conn, month)
    if unsynced:
        DROPPED_UNSYNCED.inc(unsynced)
        log.error("ledger.unsynced_rows_dropped", extra={"month": month.isoformat(), "events": unsynced})
    forgotten, after = 0, ""
    while True:
        n, last = await repo.forget_event_ids(conn, month, after, CHUNK)
        forgotten += n
        if last is None:
            break
        after = last
    await repo.drop_month(conn, month)
    DROPPED.inc()
    PRUNED.labels("usage_event_ids").inc(forgotten)
    log.info("ledger.month_dropped", extra={"month": month.isoformat(), "event_ids": forgotten})


async def _all(step: Callable[[], Awaitable[int]]) -> int:
    total = 0
    while True:
        n = await step()
        total += n
        if n < CHUNK:
            return total


async def loop(rt: UsageSyncRuntime) -> None:
    while not rt.stopping.is_set():
        wait = EVERY_SECONDS
        try:
            async with rt.pool.acquire() as conn:
                await run_once(conn, rt.now(), rt.settings.usage_ledger_retention_days)
            LAST_RUN.set_to_current_time()
        except asyncpg.LockNotAvailableError:
            log.warning("ledger.retention_retry", extra={"reason": f"lock not granted within {LOCK_TIMEOUT}"})
            wait = RETRY_SECONDS
        except Exception:
            log.exception("ledger.retention_failed")
            wait = RETRY_SECONDS
        await asyncio.sleep(wait)
