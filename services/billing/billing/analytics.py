"""Where a user's tokens went and what they cost: usage-sync's daily rollups, grouped as the caller asks. Pure but for
the one read (repository.usage_sums), so the grouping rules are tested without a database."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from typing import Any

from polar_billing_client.contracts import MAX_USAGE_DAYS, UsageReport

from shared.periods import Period

OTHER = "other"
DIMENSIONS = {"day": "day", "model": "model", "thread": "thread_id"}
SUMS = ("events", "input_tokens", "output_tokens", "cached_input_tokens", "billable_tokens")


class BadRange(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def days_of(period: Period) -> tuple[date, date]:
    """A billing period as UTC days: the day it starts, and the day after the one it ends in."""
    start, end = period
    last = end - timedelta(microseconds=1)
    return start.date(), last.date() + timedelta(days=1)


def date_range(from_: date | None, to: date | None, period: Period) -> tuple[date, date]:
    default_from, default_to = days_of(period)
    start, end = from_ or default_from, to or default_to
    if start >= end:
        raise BadRange("from", "from: must be before to")
    if (end - start).days > MAX_USAGE_DAYS:
        raise BadRange("to", f"to: a range is at most {MAX_USAGE_DAYS} days")
    return start, end


FIELDS = (*SUMS, "cost_micro_usd", "priced_events")


def _add(into: list[int], r: Mapping[str, Any]) -> None:
    for i, f in enumerate(FIELDS):
        into[i] += r[f]


def _as_sums(s: Sequence[int]) -> dict[str, Any]:
    events, cost, priced = s[0], s[5], s[6]
    return {**dict(zip(SUMS, s[:5], strict=True)), "cost_usd": round(cost / 1_000_000, 6) if priced else None,
            "unpriced_events": events - priced}


def report(rows: Sequence[Mapping[str, Any]], start: date, end: date, group_by: Sequence[str],
           limit: int | None) -> UsageReport:
    """Rows as summed by the database (one per combination of the asked dimensions) → the report: the top `limit`
    models / threads by tokens (input + output) with the rest as "other", and, when grouped by day, every day of the
    range present (a day without usage as one row of zeros)."""
    keys = [DIMENSIONS[g] for g in group_by]
    ranked = [k for k in keys if k != "day"]
    keep: set[tuple[Any, ...]] | None = None
    if limit is not None and ranked:
        tokens: dict[tuple[Any, ...], int] = defaultdict(int)
        for r in rows:
            tokens[tuple(r[k] for k in ranked)] += r["input_tokens"] + r["output_tokens"]
        keep = set(sorted(tokens, key=lambda k: (-tokens[k], str(k)))[:limit])
    groups: dict[tuple[Any, ...], list[int]] = {}
    total = [sum(r[f] for r in rows) for f in FIELDS]
    by_day = "day" in keys
    for r in rows:
        named = tuple(r[k] for k in ranked)
        if keep is not None and named not in keep:
            named = tuple(OTHER for _ in ranked)
        key = (r["day"] if by_day else None, *named)
        if keep is None:  # the database grouped exactly these keys: one row each
            groups[key] = [r[f] for f in FIELDS]
        else:
            _add(groups.setdefault(key, [0] * len(FIELDS)), r)
    if by_day:
        seen = {k[0] for k in groups}
        day = start
        while day < end:
            if day not in seen:
                groups[(day, *(None for _ in ranked))] = [0] * len(FIELDS)
            day += timedelta(days=1)
    out = []
    for key, sums in groups.items():
        values = dict(zip(ranked, key[1:], strict=True))
        out.append({"day": key[0], "model": values.get("model"), "thread_id": values.get("thread_id"),
                    **_as_sums(sums)})
    # By day, then the most tokens first, "other" last.
    out.sort(key=lambda r: (r["day"] or date.min, OTHER in (r["model"], r["thread_id"]),
                            -(r["input_tokens"] + r["output_tokens"]), r["model"] or "", r["thread_id"] or ""))
    # Plain dicts, validated once by pydantic-core: a year by day and model is thousands of rows.
    return UsageReport.model_validate({"from": start, "to": end, "totals": _as_sums(total), "rows": out})
