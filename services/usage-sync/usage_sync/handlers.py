"""Usage-sync's NATS entry point: a batch of usage events. No SQL here."""
from __future__ import annotations

import logging

from nats.aio.msg import Msg
from prometheus_client import Counter, Histogram

from shared import topology
from shared.retry import TRANSIENT, backoff
from shared.service import Runtime

from . import ledger

log = logging.getLogger(__name__)

RECEIVED = Counter("usage_events_received_total", "Usage messages received")
INSERTED = Counter("usage_events_inserted_total", "Usage events newly recorded in the ledger")
DUPLICATES = Counter("usage_events_duplicates_total", "Usage events already in the ledger (redelivery, retry)")
DEAD = Counter("usage_events_dead_lettered_total", "Usage messages refused, by reason", ["reason"])
BATCH = Histogram("usage_batch_size", "Messages per consumed batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 2000))


async def on_usage_batch(msgs: list[Msg], rt: Runtime) -> None:
    """Record the batch and commit, then ack the good messages and terminate the bad ones (dead-lettered)."""
    RECEIVED.inc(len(msgs))
    BATCH.observe(len(msgs))
    parsed = ledger.parse(msgs)
    assert rt.pool is not None
    try:
        async with rt.pool.acquire() as conn:
            result = await ledger.record(conn, [e for _, e in parsed.good], parsed.bad)
    except TRANSIENT as exc:
        attempt = max((m.metadata.num_delivered or 1) for m in msgs)
        log.warning("usage.batch_retry", extra={"size": len(msgs), "error": f"{type(exc).__name__}: {exc}"[:300]})
        for m in msgs:
            await m.nak(delay=backoff(attempt))
        return
    except Exception as exc:  # noqa: BLE001 - something in the batch the validation let through: isolate it
        log.warning("usage.batch_failed_isolating", extra={"size": len(msgs), "error": f"{type(exc).__name__}"})
        await _one_by_one(rt, parsed)
        return
    await _settle(rt, parsed, result)


async def _one_by_one(rt: Runtime, parsed: ledger.Parsed) -> None:
    """Each message in its own transaction; the ones that still fail are dead-lettered with the database's reason."""
    assert rt.pool is not None
    total = ledger.Recorded()
    still_bad: list[ledger.Bad] = list(parsed.bad)
    good = []
    async with rt.pool.acquire() as conn:
        for m, event in parsed.good:
            try:
                r = await ledger.record(conn, [event], [])
                total.inserted += r.inserted
                total.duplicates += r.duplicates
                good.append((m, event))
            except TRANSIENT:
                await m.nak(delay=1.0)
            except Exception as exc:  # noqa: BLE001
                still_bad.append(ledger.Bad(m, f"refused by the database: {type(exc).__name__}: {exc}"[:500]))
        await ledger.record(conn, [], still_bad)  # the batch's transaction rolled back: record them all
    await _settle(rt, ledger.Parsed(good=good, bad=still_bad), total)


async def _settle(rt: Runtime, parsed: ledger.Parsed, result: ledger.Recorded) -> None:
    for bad in parsed.bad:
        # The dead_letters row is committed already; the subject tells whoever watches it.
        try:
            await rt.broker.connection.jetstream().publish(
                topology.dead_letter_subject("usage-sync", bad.msg.subject), bad.msg.data,
                stream=topology.DEAD_LETTERS.name,
                headers={"Nats-Msg-Id": f"usage-sync:{bad.msg.metadata.sequence.stream}",
                         "x-dead-letter-reason": bad.reason[:1000]},
                timeout=5.0,
            )
        except Exception:  # noqa: BLE001 - the row in dead_letters is the record; the subject is a courtesy
            log.warning("usage.deadletter_publish_failed", extra={"subject": bad.msg.subject})
        await bad.msg.term()
        DEAD.labels(bad.reason.split(":")[0]).inc()
        log.warning("usage.dead_lettered", extra={"subject": bad.msg.subject, "reason": bad.reason})
    for m, _ in parsed.good:
        await m.ack()
    INSERTED.inc(result.inserted)
    DUPLICATES.inc(result.duplicates)
    if parsed.good:
        log.debug("usage.batch", extra={"size": len(parsed.good), "inserted": result.inserted,
                                        "duplicates": result.duplicates})
