"""Usage events → the ledger and the counters limits read, one transaction per batch. No SQL here.

Counters move only for ledger rows actually inserted, so a redelivered or republished event counts once.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
from nats.aio.msg import Msg
from pydantic import ValidationError

from shared.contracts import UsageEvent
from shared.periods import billing_period, day_of
from shared.plans import PLANS, LimitName, PlanName

from . import repository as repo

log = logging.getLogger(__name__)


@dataclass
class Bad:
    msg: Msg
    reason: str


@dataclass
class Parsed:
    good: list[tuple[Msg, UsageEvent]] = field(default_factory=list)
    bad: list[Bad] = field(default_factory=list)


@dataclass
class Recorded:
    inserted: int = 0
    duplicates: int = 0
    settled: int = 0


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "invalid usage event: " + "; ".join(parts)


def parse(msgs: list[Msg]) -> Parsed:
    """Each message on its own: one bad message never takes the others down with it."""
    out = Parsed()
    for m in msgs:
        try:
            out.good.append((m, UsageEvent.model_validate_json(m.data)))
        except ValidationError as exc:
            kinds = {e["type"] for e in exc.errors(include_url=False)}
            if "json_invalid" in kinds:
                out.bad.append(Bad(m, "malformed JSON"))
            elif "model_type" in kinds:
                out.bad.append(Bad(m, "not a JSON object"))
            else:
                out.bad.append(Bad(m, _reason(exc)))
    return out


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


def dead_letter_row(bad: Bad) -> tuple:
    meta = bad.msg.metadata
    headers = dict(bad.msg.headers or {})
    return (bad.msg.subject, headers.get("Nats-Msg-Id"), meta.sequence.stream, headers, bad.msg.data, bad.reason,
            meta.num_delivered)


async def record(conn: asyncpg.Connection, events: list[UsageEvent], bad: list[Bad]) -> Recorded:
    """Ledger rows, counters, threads, reservations and dead letters of one batch, in one transaction."""
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
        await repo.insert_dead_letters(conn, [dead_letter_row(b) for b in bad])
    return Recorded(inserted=len(inserted), duplicates=len(events) - len(inserted), settled=settled)
