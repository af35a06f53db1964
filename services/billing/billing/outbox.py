"""Publishes billing_outbox rows to BILLING_EVENTS: woken after each applied webhook, and every second anyway."""
from __future__ import annotations

import asyncio
import json
import logging

import asyncpg
from faststream.nats import NatsBroker
from prometheus_client import Counter

from shared import topology
from shared.service import Runtime

from . import repository as repo

log = logging.getLogger(__name__)

PUBLISHED = Counter("billing_events_published_total", "billing.event.* messages published", ["subject"])


async def flush(conn: asyncpg.Connection, broker: NatsBroker) -> int:
    """Publish what is pending and mark it; on any failure nothing is marked and the next round sends it again."""
    async with conn.transaction():
        rows = await repo.take_outbox(conn)
        for row in rows:
            await broker.publish(
                json.dumps(row["payload"]).encode(),
                subject=row["subject"],
                stream=topology.BILLING_EVENTS.name,
                headers={"Nats-Msg-Id": row["msg_id"], "content-type": "application/json"},
                timeout=5.0,
            )
            PUBLISHED.labels(row["subject"]).inc()
            log.info("billing_event.published", extra={"subject": row["subject"], "msg_id": row["msg_id"],
                                                       "user_id": row["payload"].get("user_id")})
        if rows:
            await repo.mark_published(conn, [row["id"] for row in rows])
    return len(rows)


async def loop(rt: Runtime, wakeup: asyncio.Event, every_seconds: float = 1.0) -> None:
    assert rt.pool is not None
    while not rt.stopping:
        try:
            async with rt.pool.acquire() as conn:
                while await flush(conn, rt.broker):
                    pass
        except Exception as exc:  # noqa: BLE001 - NATS or PostgreSQL away: the rows wait for the next round
            log.warning("billing_event.publish_failed", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
        try:
            await asyncio.wait_for(wakeup.wait(), every_seconds)
        except asyncio.TimeoutError:
            pass
        wakeup.clear()
