"""Where a user's tokens went and what they cost: usage-sync's daily rollups, grouped as the caller asks. Pure but for
the one read (repository.usage_sums), so the grouping rules are tested without a database."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, timedelta
from typing import Any

from polar_billing_client.contracts import MAX_USAGE_DAYS, UsageReport, UsageRow, UsageSums

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


def _sums(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    out = dict.fromkeys((*SUMS, "cost_micro_usd", "priced_events"), 0)
    for r in rows:
        for k in out:
            out[k] += int(r[k])
    return out


def _as_sums(s: Mapping[str, int]) -> dict[str, Any]:
    return {**{k: s[k] for k in SUMS},
            "cost_usd": round(s["cost_micro_usd"] / 1_000_000, 6) if s["priced_events"] else None,
            "unpriced_events": s["events"] - s["priced_events"]}


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
            tokens[tuple(r[k] for k in ranked)] += int(r["input_tokens"]) + int(r["output_tokens"])
        keep = set(sorted(tokens, key=lambda k: (-tokens[k], str(k)))[:limit])
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        named = tuple(r[k] for k in ranked)
        if keep is not None and named not in keep:
            named = tuple(OTHER for _ in ranked)
        groups[(r["day"] if "day" in keys else None, *named)].append(r)
    if "day" in keys:
        seen = {k[0] for k in groups}
        day = start
        while day < end:
            if day not in seen:
                groups[(day, *(None for _ in ranked))] = []
            day += timedelta(days=1)
    out = []
    for key, members in groups.items():
        values = dict(zip(ranked, key[1:], strict=True))
        out.append(UsageRow(day=key[0], model=values.get("model"), thread_id=values.get("thread_id"),
                            **_as_sums(_sums(members))))
    # By day, then the most tokens first, "other" last.
    out.sort(key=lambda r: (r.day or date.min, OTHER in (r.model, r.thread_id), -(r.input_tokens + r.output_tokens),
                            r.model or "", r.thread_id or ""))
    return UsageReport(from_=start, to=end, totals=UsageSums(**_as_sums(_sums(rows))), rows=out)
