"""Billing's periodic jobs. Each loop stops cleanly at shutdown, after the step in hand."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

from prometheus_client import Counter

from shared.service import Runtime

from . import repository as repo

log = logging.getLogger(__name__)

PURGED = Counter("billing_webhook_log_purged_total", "Webhook log rows deleted after the retention period")


async def purge_webhook_log_once(rt: Runtime, retention_days: int) -> int:
    assert rt.pool is not None
    cutoff = datetime.now(timezone.utc) - timedelta(days=retention_days)
    async with rt.pool.acquire() as conn:
        n = await repo.delete_webhooks_before(conn, cutoff)
    if n:
        PURGED.inc(n)
        log.info("webhook_log.purged", extra={"rows": n, "cutoff": cutoff.isoformat()})
    return n


async def retention_loop(rt: Runtime, retention_days: int, every_seconds: float = 3600.0) -> None:
    while not rt.stopping:
        try:
            await purge_webhook_log_once(rt, retention_days)
        except Exception:  # noqa: BLE001 - try again next round
            log.exception("webhook_log.purge_failed")
        await asyncio.sleep(every_seconds)
