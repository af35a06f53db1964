"""Usage events → the ledger and the counters limits read, one transaction per batch. No SQL here.

Counters move only for ledger rows actually inserted, so a redelivered or republished event counts once, even days
apart and with another occurred_at (usage_event_ids holds every id within retention). An event that occurred before
`oldest` (the retention cut) is not recorded: its id may be forgotten already, and counting it would count it twice.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import asyncpg
from polar_billing_client.contracts import UsageEvent

from shared.periods import Period, billing_period, day_of
from shared.plans import PLANS, LimitName, PlanName
from shared.prices import PriceCatalog

from . import repository as repo

log = logging.getLogger(__name__)
DEFAULT_PRICES = PriceCatalog.load()


@dataclass
class Recorded:
    inserted: int = 0
    duplicates: int = 0
    too_old: int = 0  # occurred before `oldest`: not recorded
    settled: int = 0
    thresholds: list[tuple] = field(default_factory=list)  # crossings now stored (committed once record returns)


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


class Periods:
    """The counter periods of one batch's events. Most events of a batch share a day and a period: each is computed
    once per (user's period, UTC hour) rather than once per event."""

    def __init__(self, paid: dict[str, tuple[str, Period | None]]) -> None:
        self.paid = paid
        self._billing: dict[tuple[Period | None, datetime], Period] = {}
        self._days: dict[datetime, Period] = {}

    @staticmethod
    def _hour(at: datetime) -> datetime:
        return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)

    def billing(self, user_id: str, at: datetime) -> Period:
        sub = self.paid[user_id][1] if user_id in self.paid else None
        hour = self._hour(at)
        if sub is not None and sub[0] > hour:  # a period may start mid-hour: decide this event exactly
            return billing_period(sub, at)
        key = (sub, hour)
        if key not in self._billing:
            self._billing[key] = billing_period(sub, hour)
        found = self._billing[key]
        return found if found[1] > at else billing_period(sub, at)

    def day(self, at: datetime) -> Period:
        hour = self._hour(at)
        if hour not in self._days:
            self._days[hour] = day_of(hour)
        return self._days[hour]


async def record(conn: asyncpg.Connection, events: list[UsageEvent], stored_thresholds: set[tuple] | None = None,
                 prices: PriceCatalog = DEFAULT_PRICES, *, oldest: datetime | None = None) -> Recorded:
    """Ledger rows, counters, threads and reservations of one batch, in one transaction.

    `stored_thresholds`: crossings this process already saw committed (user, limit, period start, percent); they are
    not sent again. The table's primary key keeps each crossing once either way: this only saves the statement.
    `oldest`: the retention cut (None: no cut, for tools that load history into months they created)."""
    unique: dict[str, UsageEvent] = {}
    too_old = 0
    for e in events:
        if oldest is not None and e.occurred_at < oldest:
            too_old += 1
            continue
        unique.setdefault(e.event_id, e)  # a repeat inside the batch is a duplicate like any other
    async with conn.transaction():
        paid = await repo.paid_periods(conn, sorted({e.user_id for e in unique.values()}))
        costs = {e.event_id: prices.cost_micro_usd(e.model, e.occurred_at, e.input_tokens, e.cached_input_tokens,
                                                   e.output_tokens) for e in unique.values()}
        inserted = await repo.insert_events(conn, [
            (e.event_id, e.user_id, e.thread_id, e.model, e.input_tokens, e.output_tokens, e.cached_input_tokens,
             e.custom_key, e.billable_tokens, e.reservation_id, e.occurred_at, costs[e.event_id],
             prices.version if costs[e.event_id] is not None else None)
            for e in sorted(unique.values(), key=lambda e: e.event_id)  # one lock order for concurrent batches
        ])
        rollups: dict[tuple[str, date, str, str], list[int]] = {}
        deltas: dict[tuple[str, str, datetime, datetime], int] = defaultdict(int)
        threads: list[tuple[str, datetime, str]] = []
        period_end: dict[tuple[str, datetime], datetime] = {}
        reservations = []
        periods = Periods(paid)
        for e in unique.values():
            if e.event_id not in inserted:
                continue
            start, end = periods.billing(e.user_id, e.occurred_at)
            if e.billable_tokens:
                deltas[(e.user_id, LimitName.TOKENS_PER_MONTH.value, start, end)] += e.billable_tokens
            d_start, d_end = periods.day(e.occurred_at)
            deltas[(e.user_id, LimitName.MESSAGES_PER_DAY.value, d_start, d_end)] += 1
            threads.append((e.user_id, start, e.thread_id))
            cost = costs[e.event_id]
            key = (e.user_id, d_start.date(), e.model, e.thread_id)
            sums = rollups.get(key)
            if sums is None:
                rollups[key] = [1, e.input_tokens, e.output_tokens, e.cached_input_tokens, e.billable_tokens,
                                cost or 0, int(cost is not None)]
            else:
                sums[0] += 1
                sums[1] += e.input_tokens
                sums[2] += e.output_tokens
                sums[3] += e.cached_input_tokens
                sums[4] += e.billable_tokens
                sums[5] += cost or 0
                sums[6] += cost is not None
            period_end[(e.user_id, start)] = end
            if e.reservation_id:
                reservations.append(e.reservation_id)
        for user_id, start in await repo.add_threads(conn, threads):
            deltas[(user_id, LimitName.THREADS_PER_MONTH.value, start, period_end[(user_id, start)])] += 1
        counters = await repo.add_to_counters(conn, deltas)
        await repo.add_to_rollups(conn, rollups)
        crossed = [c for c in crossings(counters, {u: plan for u, (plan, _) in paid.items()})
                   if stored_thresholds is None or c[:4] not in stored_thresholds]
        await repo.add_thresholds(conn, crossed)
        settled = await repo.settle_reservations(conn, reservations)
    return Recorded(inserted=len(inserted), duplicates=len(events) - too_old - len(inserted), too_old=too_old,
                    settled=settled, thresholds=[c[:4] for c in crossed])
