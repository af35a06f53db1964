"""Usage-sync's consumer: batches of usage events into the ledger. No SQL here."""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from nats.aio.msg import Msg
from polar_billing_client.contracts import UsageEvent
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from shared import topology
from shared.messaging.consume import Invalid, consumes_batches
from shared.runtime import utcnow

from . import ledger, retention
from .runtime import UsageSyncRuntime

log = logging.getLogger(__name__)

RECEIVED = Counter("usage_events_received_total", "Usage messages received")
INSERTED = Counter("usage_events_inserted_total", "Usage events newly recorded in the ledger")
DUPLICATES = Counter("usage_events_duplicates_total", "Usage events already in the ledger (redelivery, retry)")
DEAD = Counter("usage_events_dead_lettered_total", "Usage messages refused, by reason", ["reason"])
TOO_OLD = Counter("usage_events_too_old_total", "Usage events that occurred before the ledger's retention window "
                  "(not counted: dead-lettered, or skipped by the ledger at the boundary)")
BATCH = Histogram("usage_batch_size", "Events per recorded batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 2000))


def parse_usage(msg: Msg) -> UsageEvent:
    """Each message on its own: one bad message never takes the others down with it."""
    try:
        return UsageEvent.model_validate_json(msg.data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        kinds = {e["type"] for e in errors}
        if "json_invalid" in kinds:
            raise Invalid("malformed JSON") from None
        if "model_type" in kinds:
            raise Invalid("not a JSON object") from None
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors)
        raise Invalid(f"invalid usage event: {where}") from None


def in_ledger_window(retention_days: int, clock: Callable[[], datetime] = utcnow) -> Callable[[Msg], UsageEvent]:
    """parse_usage, and then the ledger's window: an event that occurred before the retention cut is not counted again
    (its id may be forgotten, so a repeat would count twice; Polar's permanent external_id dedup covers the
    invoice), and one too far ahead has no month to go in. Both are dead-lettered with the reason rather than acked
    unseen: nothing a client sends disappears without a trace, and a flood of old replays shows."""
    window = timedelta(days=retention_days)

    def parse(msg: Msg) -> UsageEvent:
        event = parse_usage(msg)
        now = clock()
        if event.occurred_at < now - window:
            TOO_OLD.inc()
            raise Invalid(f"too old: occurred_at {event.occurred_at.isoformat()} is before the ledger's retention "
                          f"window of {retention_days} days; not counted")
        if event.occurred_at > now + retention.MAX_AHEAD:
            raise Invalid(f"too far ahead: occurred_at {event.occurred_at.isoformat()} is more than "
                          f"{retention.MAX_AHEAD.days} days ahead of this clock")
        return event
    return parse


async def count_dead(msg: Msg, reason: str, rt: UsageSyncRuntime) -> None:
    RECEIVED.inc()
    DEAD.labels(reason.split(":")[0]).inc()


# Fed by USAGE (usage.event.>) through the durable `usage-sync`, in batches of up to USAGE_BATCH_SIZE; app.py
# parses with `in_ledger_window(USAGE_LEDGER_RETENTION_DAYS)`.
@consumes_batches(topology.USAGE_SYNC, parse=parse_usage, on_dead_letter=count_dead)
async def on_usage_batch(events: list[UsageEvent], rt: UsageSyncRuntime) -> None:
    """Record the batch in one statement; the consumer acks the messages once it returns."""
    oldest = retention.cut_of(rt.now(), rt.settings.usage_ledger_retention_days)
    async with rt.pool.acquire() as conn:
        result = await ledger.record(conn, events, rt.remembered, rt.prices, oldest=oldest)
    if result.too_old:  # parsed a moment before the cut passed them: skipped like a duplicate
        TOO_OLD.inc(result.too_old)
        log.warning("usage.too_old_skipped", extra={"events": result.too_old, "oldest": oldest.isoformat()})
    rt.remembered.add(result)
    RECEIVED.inc(len(events))
    BATCH.observe(len(events))
    INSERTED.inc(result.inserted)
    DUPLICATES.inc(result.duplicates)
    log.debug("usage.batch", extra={"size": len(events), "inserted": result.inserted,
                                    "duplicates": result.duplicates})
