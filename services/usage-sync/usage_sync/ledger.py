"""Usage events → the ledger and the counters limits read, one statement per batch. No SQL here.

Counters move only for ledger rows actually inserted, so a redelivered or republished event counts once, even days
apart and with another occurred_at (usage_event_ids holds every id within retention). An event that occurred before
`oldest` (the retention cut) is not recorded: its id may be forgotten already, and counting it would count it twice.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from polar_billing_client.contracts import UsageEvent

from shared.periods import Period, billing_period
from shared.plans import PLANS, LimitName
from shared.prices import PriceCatalog

from . import repository as repo

log = logging.getLogger(__name__)
DEFAULT_PRICES = PriceCatalog.load()
# Each plan's limits, for the crossings the batch's statement records (0 or absent: unlimited).
LIMITS = [(plan.value, name.value, PLANS[plan].limit(name) or 0) for plan in PLANS for name in LimitName]


@dataclass
class Recorded:
    inserted: int = 0
    duplicates: int = 0
    too_old: int = 0  # occurred before `oldest`: not recorded
    settled: int = 0
    crossings: int = 0  # threshold crossings stored for the first time
    threads: set[tuple[str, datetime, str]] = field(default_factory=set)  # (user, period, thread) now stored


@dataclass
class Remembered:
    """Threads (user, period start, thread) this process saw committed, so they are not sent again with every batch:
    the table's key keeps each once either way, this only saves rows. Emptied when it outgrows `limit`."""
    threads: set[tuple[str, datetime, str]] = field(default_factory=set)
    limit: int = 100_000

    def add(self, recorded: Recorded) -> None:
        """Only once `record` returned (its statement committed): a row that was rolled back must be sent again."""
        if len(self.threads) > self.limit:
            self.threads.clear()
        self.threads.update(recorded.threads)


class Periods:
    """The counter periods of one batch's events. Most events of a batch share a day and a period: each is computed
    once per (user's period, UTC hour) rather than once per event, keyed by the event's epoch hour (cheaper to get
    than a truncated datetime)."""

    def __init__(self, paid: dict[str, tuple[str, Period | None]]) -> None:
        self.paid = paid
        self._billing: dict[tuple[Period | None, int], Period | None] = {}  # None: decide each event exactly

    def billing(self, user_id: str, at: datetime) -> Period:
        sub = self.paid[user_id][1] if user_id in self.paid else None
        key = (sub, int(at.timestamp() // 3600))
        if key in self._billing:
            found = self._billing[key]
        else:
            hour = datetime.fromtimestamp(key[1] * 3600, UTC)
            # A period may start mid-hour: such an hour's events are decided exactly.
            found = self._billing[key] = None if sub is not None and sub[0] > hour else billing_period(sub, hour)
        return found if found is not None and found[1] > at else billing_period(sub, at)


async def record(conn: asyncpg.Connection, events: list[UsageEvent], remembered: Remembered | None = None,
                 prices: PriceCatalog = DEFAULT_PRICES, *, oldest: datetime | None = None) -> Recorded:
    """Ledger rows, counters, threads, rollups, threshold crossings and reservations of one batch: the users' plans
    are read first, then everything is written by one statement (atomic on its own, and one round trip).

    `remembered`: threads this process already saw committed; they are not sent again.
    `oldest`: the retention cut (None: no cut, for tools that load history into months they created)."""
    unique: dict[str, UsageEvent] = {}
    too_old = 0
    for e in events:
        if oldest is not None and e.occurred_at < oldest:
            too_old += 1
            continue
        unique.setdefault(e.event_id, e)  # a repeat inside the batch is a duplicate like any other
    if not unique:
        return Recorded(duplicates=len(events) - too_old, too_old=too_old)
    paid = await repo.paid_periods(conn, sorted({e.user_id for e in unique.values()}))
    periods = Periods(paid)
    period_index: dict[Period, int] = {}
    known = remembered.threads if remembered is not None else set()
    rows = []
    threads: dict[str, tuple[str, datetime, str]] = {}
    for e in sorted(unique.values(), key=lambda e: e.event_id):  # one lock order for concurrent batches
        period = periods.billing(e.user_id, e.occurred_at)
        index = period_index.setdefault(period, len(period_index) + 1)  # SQL arrays count from 1
        thread = (e.user_id, period[0], e.thread_id)
        threads[e.event_id] = thread
        cost = prices.cost_micro_usd(e.model, e.occurred_at, e.input_tokens, e.cached_input_tokens, e.output_tokens)
        rows.append((e.event_id, e.user_id, e.thread_id, e.model, e.input_tokens, e.output_tokens,
                     e.cached_input_tokens, e.custom_key, e.billable_tokens, e.reservation_id, e.occurred_at, cost,
                     prices.version if cost is not None else None, index, thread in known))
    written = await repo.record_batch(conn, rows, list(period_index), {u: plan for u, (plan, _) in paid.items()},
                                      LIMITS)
    repeated = set(written.duplicates)
    return Recorded(inserted=len(unique) - len(repeated), duplicates=len(events) - too_old - len(unique) + len(repeated),
                    too_old=too_old, settled=written.settled, crossings=written.crossings,
                    threads={t for event_id, t in threads.items() if event_id not in repeated})
