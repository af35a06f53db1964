"""One Polar request budget for the whole deployment, kept in PostgreSQL so every process of billing and usage-sync
draws from the same count (docs/polar.md §9: the limit is per organization, shared by every caller, and counted in a
fixed window whose 429 often says "retry in 60 s": a budget that waits for 429s is already too late).

Each request takes one unit before it is sent, counted over the last window (sliding: whatever second Polar's fixed
window starts on, it never sees more than the budget), by priority:

| priority     | its own share | the window's total it may fill |
|--------------|---------------|--------------------------------|
| interactive  | all           | all (checkout, portal: a user is waiting)       |
| ingest       | 1/2           | 9/10 (usage events: batches grow instead)       |
| reconcile    | 3/10          | 8/10 (sweeps, the webhook endpoint's health)     |

so a saturated ingest and a sweep together still leave a fifth of every window to the users. A 429 any process gets
is written down, and nobody sends before its Retry-After has passed.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import asyncpg
from prometheus_client import Counter, Histogram

from shared.db import repository as repo

log = logging.getLogger(__name__)


class Priority(StrEnum):
    INTERACTIVE = "interactive"
    INGEST = "ingest"
    RECONCILE = "reconcile"


SHARES: dict[Priority, tuple[float, float]] = {
    Priority.INTERACTIVE: (1.0, 1.0),
    Priority.INGEST: (0.5, 0.9),
    Priority.RECONCILE: (0.3, 0.8),
}

TAKEN = Counter("polar_budget_requests_total", "Polar requests counted against the shared budget", ["priority"])
WAITED = Histogram("polar_budget_wait_seconds", "Time a Polar request waited for the budget", ["priority"],
                   buckets=(0.01, 0.1, 0.5, 1, 5, 15, 30, 60, 120))
REFUSED = Counter("polar_budget_refused_total", "Interactive requests refused: no budget within their wait",
                  ["priority"])
RATE_LIMITED = Counter("polar_rate_limited_total", "429s Polar answered us (each then honoured by every process)")
for _p in Priority:
    TAKEN.labels(_p.value)
    REFUSED.labels(_p.value)


class OverBudget(Exception):
    """No budget within the caller's wait: `retry_after` seconds until there will be."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the Polar request budget is spent; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Budget:
    pool: asyncpg.Pool
    per_window: int  # POLAR_REQUESTS_PER_MINUTE
    window_seconds: float = 60.0

    def caps(self, priority: Priority) -> tuple[int, int]:
        own, total = SHARES[priority]
        return max(1, math.floor(self.per_window * own)), max(1, math.floor(self.per_window * total))

    async def take(self, priority: Priority, *, wait_up_to: float | None = None) -> None:
        """One request's unit of the budget, waiting until one frees (or a 429's wait ends) when the last window's
        is spent. `wait_up_to`: the longest to wait before OverBudget (interactive callers); None: as long as it
        takes."""
        own, total = self.caps(priority)
        t0 = time.monotonic()
        while True:
            async with self.pool.acquire() as conn:
                taken, wait = await repo.take_polar_request(conn, self.window_seconds, priority.value, own, total)
            if taken:
                TAKEN.labels(priority.value).inc()
                WAITED.labels(priority.value).observe(time.monotonic() - t0)
                return
            if wait_up_to is not None and time.monotonic() - t0 + wait > wait_up_to:
                REFUSED.labels(priority.value).inc()
                raise OverBudget(max(1, math.ceil(wait)))
            await asyncio.sleep(wait + 0.01)

    async def rate_limited(self, retry_after: int | None, what: str) -> None:
        """A 429: every process waits Retry-After (at least a second) before its next request."""
        RATE_LIMITED.inc()
        wait = max(1, retry_after or 1)
        until = datetime.now(UTC) + timedelta(seconds=wait)
        log.warning("polar.rate_limited", extra={"call": what, "retry_after": wait})
        await repo.note_polar_rate_limited(self.pool, until, what)
