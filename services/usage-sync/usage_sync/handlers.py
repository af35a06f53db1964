"""Usage-sync's consumer: batches of usage events into the ledger. No SQL here."""
from __future__ import annotations

import logging

from nats.aio.msg import Msg
from polar_billing_client.contracts import UsageEvent
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from shared import topology
from shared.messaging.consume import Invalid, consumes_batches

from . import ledger
from .runtime import UsageSyncRuntime

log = logging.getLogger(__name__)

RECEIVED = Counter("usage_events_received_total", "Usage messages received")
INSERTED = Counter("usage_events_inserted_total", "Usage events newly recorded in the ledger")
DUPLICATES = Counter("usage_events_duplicates_total", "Usage events already in the ledger (redelivery, retry)")
DEAD = Counter("usage_events_dead_lettered_total", "Usage messages refused, by reason", ["reason"])
MAX_REMEMBERED_THRESHOLDS = 100_000
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


async def count_dead(msg: Msg, reason: str, rt: UsageSyncRuntime) -> None:
    RECEIVED.inc()
    DEAD.labels(reason.split(":")[0]).inc()


# Fed by USAGE (usage.event.>) through the durable `usage-sync`, in batches of up to USAGE_BATCH_SIZE.
@consumes_batches(topology.USAGE_SYNC, parse=parse_usage, on_dead_letter=count_dead)
async def on_usage_batch(events: list[UsageEvent], rt: UsageSyncRuntime) -> None:
    """Record the batch in one transaction; the consumer acks the messages once it returns."""
    async with rt.pool.acquire() as conn:
        result = await ledger.record(conn, events, rt.stored_thresholds, rt.prices)
    if len(rt.stored_thresholds) > MAX_REMEMBERED_THRESHOLDS:
        rt.stored_thresholds.clear()
    rt.stored_thresholds.update(result.thresholds)
    RECEIVED.inc(len(events))
    BATCH.observe(len(events))
    INSERTED.inc(result.inserted)
    DUPLICATES.inc(result.duplicates)
    log.debug("usage.batch", extra={"size": len(events), "inserted": result.inserted,
                                    "duplicates": result.duplicates})
