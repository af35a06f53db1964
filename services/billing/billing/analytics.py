"""Where a user's tokens went and what they cost: usage-sync's daily rollups, grouped as the caller asks. Pure but for
the one read (repository.usage_sums), so the grouping rules are tested without a database."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from operator import itemgetter
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


def date_range(from_: date | None, to: date | None, period: Period | None) -> tuple[date, date]:
    """The asked range, its missing ends from the billing period (which is only needed, and given, then)."""
    if from_ is None or to is None:
        if period is None:
            raise TypeError("date_range: a range with a missing end needs the billing period")
        default_from, default_to = days_of(period)
        from_, to = from_ or default_from, to or default_to
    start, end = from_, to
    if start >= end:
        raise BadRange("from", "from: must be before to")
    if (end - start).days > MAX_USAGE_DAYS:
        raise BadRange("to", f"to: a range is at most {MAX_USAGE_DAYS} days")
    return start, end


FIELDS = (*SUMS, "cost_micro_usd", "priced_events")


def _top(rows: Sequence[Mapping[str, Any]], ranked: Sequence[str], limit: int, by_day: bool) -> list[dict[str, Any]]:
    """The rows regrouped so that only the top `limit` models / threads by tokens (input + output) keep their name;
    the rest are summed as "other"."""
    tokens: dict[tuple[Any, ...], int] = defaultdict(int)
    for r in rows:
        tokens[tuple(r[k] for k in ranked)] += r["input_tokens"] + r["output_tokens"]
    keep = set(sorted(tokens, key=lambda k: (-tokens[k], str(k)))[:limit])
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        named = tuple(r[k] for k in ranked)
        if named not in keep:
            named = tuple(OTHER for _ in ranked)
        key = (r["day"] if by_day else None, *named)
        g = groups.get(key)
        if g is None:
            groups[key] = {"day": key[0], "model": None, "thread_id": None, **dict(zip(ranked, named, strict=True)),
                           **{f: r[f] for f in FIELDS}}
        else:
            for f in FIELDS:
                g[f] += r[f]
    return list(groups.values())


def report(rows: Sequence[Mapping[str, Any]], start: date, end: date, group_by: Sequence[str],
           limit: int | None) -> UsageReport:
    """Rows as summed by the database (one per combination of the asked dimensions) → the report: the top `limit`
    models / threads by tokens (input + output) with the rest as "other", and, when grouped by day, every day of the
    range present (a day without usage as one row of zeros)."""
    keys = [DIMENSIONS[g] for g in group_by]
    ranked = [k for k in keys if k != "day"]
    by_day = "day" in keys
    if limit is not None and ranked:
        rows = _top(rows, ranked, limit, by_day)
    # One pass, plain dicts: a year by day and model is ~1,500 rows, validated once by pydantic-core below.
    events = inp = outp = cached = billable = cost = priced = 0
    out = []
    for r in rows:
        e, i, o, c, b, m, p = (r["events"], r["input_tokens"], r["output_tokens"], r["cached_input_tokens"],
                               r["billable_tokens"], r["cost_micro_usd"], r["priced_events"])
        events += e
        inp += i
        outp += o
        cached += c
        billable += b
        cost += m
        priced += p
        out.append({"day": r["day"], "model": r["model"], "thread_id": r["thread_id"], "events": e,
                    "input_tokens": i, "output_tokens": o, "cached_input_tokens": c, "billable_tokens": b,
                    "cost_usd": round(m / 1_000_000, 6) if p else None, "unpriced_events": e - p})
    empty = []
    if by_day:
        seen = {r["day"] for r in out}
        day = start
        while day < end:
            if day not in seen:
                empty.append({"day": day, "model": None, "thread_id": None, **ZERO})
            day += timedelta(days=1)
    if limit is not None and ranked:  # by day, then the most tokens first, "other" last
        out.sort(key=lambda r: (r["day"] or date.min, OTHER in (r["model"], r["thread_id"]),
                                -(r["input_tokens"] + r["output_tokens"]), r["model"] or "", r["thread_id"] or ""))
    if empty:  # the database's order, with the empty days in their place (a stable sort by day keeps the rest)
        out += empty
        out.sort(key=itemgetter("day"))
    totals = {"events": events, "input_tokens": inp, "output_tokens": outp, "cached_input_tokens": cached,
              "billable_tokens": billable, "cost_usd": round(cost / 1_000_000, 6) if priced else None,
              "unpriced_events": events - priced}
    return UsageReport.model_validate({"from": start, "to": end, "totals": totals, "rows": out})


ZERO = {"events": 0, "input_tokens": 0, "output_tokens": 0, "cached_input_tokens": 0, "billable_tokens": 0,
        "cost_usd": None, "unpriced_events": 0}
