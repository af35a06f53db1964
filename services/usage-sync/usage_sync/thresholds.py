"""Publishes usage_thresholds rows to `billing.event.usage.threshold`: each once (Nats-Msg-Id per user, limit,
period and percent), a few seconds at most after the batch that crossed it."""
from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter

from shared import topology
from shared.contracts import UsageThreshold
from shared.service import Runtime

from . import repository as repo

log = logging.getLogger(__name__)

PUBLISHED = Counter("usage_thresholds_published_total", "usage.threshold events published", ["percent"])
SUBJECT = f"{topology.BILLING_EVENT_PREFIX}.usage.threshold"


async def flush(rt: Runtime) -> int:
    assert rt.pool is not None
    async with rt.pool.acquire() as conn, conn.transaction():
        rows = await repo.take_unpublished_thresholds(conn)
        js = rt.broker.connection.jetstream()
        for r in rows:
            event = UsageThreshold(user_id=r["user_id"], limit=r["limit_name"], percent=r["percent"], used=r["used"],
                                   limit_value=r["limit_value"], resets_at=r["resets_at"])
            msg_id = f"threshold:{r['user_id']}:{r['limit_name']}:{r['period_start'].isoformat()}:{r['percent']}"
            await js.publish(SUBJECT, event.model_dump_json().encode(), stream=topology.BILLING_EVENTS.name,
                             headers={"Nats-Msg-Id": msg_id, "content-type": "application/json"}, timeout=5.0)
            PUBLISHED.labels(str(r["percent"])).inc()
            log.info("usage.threshold", extra={"user_id": r["user_id"], "limit": r["limit_name"],
                                               "percent": r["percent"]})
        if rows:
            await repo.mark_thresholds_published(conn, rows)
    return len(rows)


async def loop(rt: Runtime, every_seconds: float = 0.5) -> None:
    while not rt.stopping:
        try:
            while await flush(rt):
                pass
        except Exception as exc:  # noqa: BLE001 - NATS or PostgreSQL away: the rows wait for the next round
            log.warning("usage.threshold_publish_failed", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
        await asyncio.sleep(every_seconds)
