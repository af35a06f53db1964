"""Billing's periodic jobs. Each loop stops at shutdown, after the step in hand."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

import asyncpg
from prometheus_client import Counter

from . import repository as repo
from .runtime import BillingRuntime

log = logging.getLogger(__name__)

PURGED = Counter("billing_webhook_log_purged_total", "Webhook log rows deleted after the retention period")
EVERY_SECONDS = 3600.0


async def purge_webhook_log_once(pool: asyncpg.Pool, retention_days: int, now: datetime) -> int:
    cutoff = now - timedelta(days=retention_days)
    async with pool.acquire() as conn:
        n = await repo.delete_webhooks_before(conn, cutoff)
    if n:
        PURGED.inc(n)
        log.info("webhook_log.purged", extra={"rows": n, "cutoff": cutoff.isoformat()})
    return n


async def retention_loop(rt: BillingRuntime) -> None:
    while not rt.stopping.is_set():
        try:
            await purge_webhook_log_once(rt.pool, rt.settings.webhook_log_retention_days, rt.now())
        except Exception:
            log.exception("webhook_log.purge_failed")
        await asyncio.sleep(EVERY_SECONDS)
