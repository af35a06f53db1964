"""Usage events → the ledger and the counters limits read, one transaction per batch. No SQL here.

Counters move only for ledger rows actually inserted, so a redelivered or republished event counts once.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from polar_billing_client.contracts import UsageEvent

from shared.periods import billing_period, day_of
from shared.plans import PLANS, LimitName, PlanName

from . import repository as repo

log = logging.getLogger(__name__)


@dataclass
class Recorded:
    inserted: int = 0
    duplicates: int = 0
    settled: int = 0


THRESHOLDS = (80, 100)


def crossings(counters: list[asyncpg.Record], plans: dict[str, str]) -> list[tuple]:
    """Each threshold a counter now stands at or past, under the user's plan (Free without a paid subscription)."""
    out = []
    for c in counters:
        limit = PLANS[PlanName(plans.get(c["user_id"], "free"))].limit(LimitName(c["limit_name"]))
        if not limit:
            continue
        for pct in THRESHOLDS:
            if c["used"] * 100 >= pct * limit:
                out.append((c["user_id"], c["limit_name"], c["period_start"], pct, c["used"], limit, c["period_end"]))
    return out


async def record(conn: asyncpg.Connection, events: list[UsageEvent]) -> Recorded:
    """Ledger rows, counters, threads and reservations of one batch, in one transaction."""
    unique: dict[str, UsageEvent] = {}
    for e in events:
        unique.setdefault(e.event_id, e)  # a repeat inside the batch is a duplicate like any other
    async with conn.transaction():
        paid = await repo.paid_periods(conn, sorted({e.user_id for e in unique.values()}))
        inserted = await repo.insert_events(conn, [
            (e.event_id, e.user_id, e.thread_id, e.model, e.input_tokens, e.output_tokens, e.cached_input_tokens,
             e.custom_key, e.billable_tokens, e.reservation_id, e.occurred_at)
            for e in sorted(unique.values(), key=lambda e: e.event_id)  # one lock order for concurrent batches
        ])
        deltas: dict[tuple[str, str, datetime, datetime], int] = defaultdict(int)
        threads: list[tuple[str, datetime, str]] = []
        period_end: dict[tuple[str, datetime], datetime] = {}
        reservations = []
        for e in unique.values():
            if e.event_id not in inserted:
                continue
            start, end = billing_period(paid[e.user_id][1] if e.user_id in paid else None, e.occurred_at)
            if e.billable_tokens:
                deltas[(e.user_id, LimitName.TOKENS_PER_MONTH.value, start, end)] += e.billable_tokens
            d_start, d_end = day_of(e.occurred_at)
            deltas[(e.user_id, LimitName.MESSAGES_PER_DAY.value, d_start, d_end)] += 1
            threads.append((e.user_id, start, e.thread_id))
            period_end[(e.user_id, start)] = end
            if e.reservation_id:
                reservations.append(e.reservation_id)
        for user_id, start in await repo.add_threads(conn, threads):
            deltas[(user_id, LimitName.THREADS_PER_MONTH.value, start, period_end[(user_id, start)])] += 1
        counters = await repo.add_to_counters(conn, deltas)
        await repo.add_thresholds(conn, crossings(counters, {u: plan for u, (plan, _) in paid.items()}))
        settled = await repo.settle_reservations(conn, reservations)
    return Recorded(inserted=len(inserted), duplicates=len(events) - len(inserted), settled=settled)
