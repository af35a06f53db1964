"""shared.periods: the calendar month, the UTC day, and a paid billing period rolled forward to `at`."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.periods import billing_period, day_of, month_of


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


PLUS_2 = timezone(timedelta(hours=2))
MINUS_5 = timezone(timedelta(hours=-5))


@pytest.mark.parametrize(
    ("at", "start", "end"),
    [
        (utc(2026, 3, 10, 15, 30), utc(2026, 3, 1), utc(2026, 4, 1)),
        (utc(2026, 3, 1), utc(2026, 3, 1), utc(2026, 4, 1)),
        (utc(2026, 3, 31, 23, 59, 59, 999_999), utc(2026, 3, 1), utc(2026, 4, 1)),
        (utc(2026, 12, 31, 12), utc(2026, 12, 1), utc(2027, 1, 1)),
        (utc(2027, 1, 1), utc(2027, 1, 1), utc(2027, 2, 1)),
        (utc(2028, 2, 29, 12), utc(2028, 2, 1), utc(2028, 3, 1)),
        (utc(2026, 2, 28, 12), utc(2026, 2, 1), utc(2026, 3, 1)),
        (utc(2026, 1, 31), utc(2026, 1, 1), utc(2026, 2, 1)),
        (datetime(2026, 3, 1, 1, 0, tzinfo=PLUS_2), utc(2026, 2, 1), utc(2026, 3, 1)),  # = Feb 28 23:00 UTC
        (datetime(2026, 12, 31, 20, 0, tzinfo=MINUS_5), utc(2027, 1, 1), utc(2027, 2, 1)),  # = Jan 1 01:00 UTC
    ],
)
def test_month_of_is_the_utc_calendar_month(at: datetime, start: datetime, end: datetime) -> None:
    assert month_of(at) == (start, end)
    assert month_of(at)[0].tzinfo == UTC


@pytest.mark.parametrize(
    ("at", "start"),
    [
        (utc(2026, 3, 10, 15, 30), utc(2026, 3, 10)),
        (utc(2026, 3, 10), utc(2026, 3, 10)),
        (utc(2026, 12, 31, 23, 59), utc(2026, 12, 31)),
        (utc(2028, 2, 28, 22), utc(2028, 2, 28)),
        (datetime(2026, 3, 10, 1, 0, tzinfo=PLUS_2), utc(2026, 3, 9)),
        (datetime(2026, 3, 10, 22, 0, tzinfo=MINUS_5), utc(2026, 3, 11)),
    ],
)
def test_day_of_is_the_utc_day(at: datetime, start: datetime) -> None:
    assert day_of(at) == (start, start + timedelta(days=1))


def test_the_day_after_feb_28_of_a_leap_year_is_feb_29() -> None:
    assert day_of(utc(2028, 2, 28, 12))[1] == utc(2028, 2, 29)
    assert day_of(utc(2026, 2, 28, 12))[1] == utc(2026, 3, 1)


PAID = (utc(2026, 2, 15, 10), utc(2026, 3, 15, 10))  # 28 days


@pytest.mark.parametrize(
    ("at", "period"),
    [
        (utc(2026, 2, 15, 10), PAID),
        (utc(2026, 3, 15, 9, 59, 59), PAID),
        (utc(2026, 3, 15, 10), (utc(2026, 3, 15, 10), utc(2026, 4, 12, 10))),
        (utc(2026, 4, 20), (utc(2026, 4, 12, 10), utc(2026, 5, 10, 10))),
        (utc(2026, 7, 1), (utc(2026, 6, 7, 10), utc(2026, 7, 5, 10))),  # four periods later
        (datetime(2026, 3, 15, 11, 30, tzinfo=PLUS_2), PAID),  # 09:30 UTC: still the first period
    ],
)
def test_a_paid_period_rolls_forward_by_its_own_length(at: datetime, period: tuple) -> None:
    assert billing_period(PAID, at) == period


@pytest.mark.parametrize(
    "subscription",
    [None, (utc(2026, 3, 15), utc(2026, 3, 15)), (utc(2026, 3, 15), utc(2026, 2, 15))],
    ids=["none", "zero-length", "negative-length"],
)
def test_no_usable_subscription_period_means_the_calendar_month(subscription: tuple | None) -> None:
    assert billing_period(subscription, utc(2026, 3, 20, 8)) == (utc(2026, 3, 1), utc(2026, 4, 1))


def test_the_ledgers_per_batch_periods_equal_the_direct_computation_for_every_event() -> None:
    """usage_sync.ledger.Periods caches by UTC hour; it must never differ from billing_period."""
    import random

    from usage_sync.ledger import Periods

    rng = random.Random(7)
    base = datetime(2026, 1, 31, 23, 0, tzinfo=UTC)
    sub_start = base - timedelta(days=20, minutes=17)
    paid = {"paid": ("pro", (sub_start, sub_start + timedelta(days=30))), "odd": ("pro", (base, base))}
    periods = Periods(paid)
    for _ in range(5000):
        at = base + timedelta(seconds=rng.uniform(-40 * 86400, 80 * 86400))
        at = at.astimezone(timezone(timedelta(hours=rng.choice([-7, 0, 5.5]))))
        for user in ("free", "paid", "odd"):
            sub = paid[user][1] if user in paid else None
            assert periods.billing(user, at) == billing_period(sub, at)
