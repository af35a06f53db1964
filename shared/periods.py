"""Which counter period an event falls in. Usage-sync writes counters with these rules; billing reads them back
with the same rules, so a limit check and the ledger always speak of the same period.

- tokens and threads: a paid plan's current billing period (billing's subscription row); Free: the calendar
  month, UTC. A paid period whose end has passed without a renewal webhook rolls forward by its own length.
- messages: the UTC day.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

Period = tuple[datetime, datetime]


def month_of(at: datetime) -> Period:
    at = at.astimezone(UTC)
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def day_of(at: datetime) -> Period:
    start = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


def billing_period(subscription_period: Period | None, at: datetime) -> Period:
    """The period `at` counts in. Usage that arrives late counts in the current paid period: Polar bills it there
    too (it attributes events by time received), so our counters and Polar's meter agree."""
    if subscription_period is None:
        return month_of(at)
    start, end = subscription_period
    length = end - start
    if length <= timedelta(0):
        return month_of(at)
    while at >= end:
        start, end = end, end + length
    return start, end
