"""Billing's consumer: the stored Polar webhooks, several at once (each user's changes serialize on the user's
lock in apply_webhook; application is monotonic, so order across users does not matter). No SQL here."""
from __future__ import annotations

import logging

from nats.aio.msg import Msg
from prometheus_client import Counter

from dev import failpoints
from shared import topology
from shared.messaging.consume import consumes

from . import repository as repo
from .apply_webhook import apply_webhook
from .polar_models import Webhook, event_type_of
from .runtime import BillingRuntime

log = logging.getLogger(__name__)

WEBHOOKS = Counter("billing_webhooks_total", "Webhooks consumed, by outcome", ["outcome"])
WEBHOOKS.labels("dead_lettered")  # at 0 from the start: an alert sees the first one


async def mark_failed(msg: Msg, reason: str, rt: BillingRuntime) -> None:
    """A webhook given up on: its log row says `failed` with the reason, for `replay --failed` once it is fixed."""
    attempts = msg.metadata.num_delivered or 1
    try:
        webhook = Webhook.from_msg(msg)
        webhook_id, event_type, payload = webhook.id, webhook.type, webhook.stored_payload()
    except Exception:  # noqa: BLE001 - an unparseable body is still logged (the dead-letter store keeps its bytes)
        headers = msg.headers or {}
        webhook_id = headers.get("webhook-id") or headers.get("Nats-Msg-Id", "")
        event_type, payload = event_type_of(msg), None
    async with rt.pool.acquire() as conn:
        await repo.record_failure(conn, webhook_id, event_type, payload, reason, attempts)
    WEBHOOKS.labels("dead_lettered").inc()


# Fed by POLAR_WEBHOOKS (polar.webhook.>) through the durable `billing`, up to 32 in flight per process.
@consumes(topology.BILLING_WEBHOOKS, parse=Webhook.from_msg, on_dead_letter=mark_failed, concurrency=32)
async def on_webhook(webhook: Webhook, rt: BillingRuntime) -> None:
    """Apply and commit (change events go to the outbox in the same transaction); the consumer then acks."""
    async with rt.pool.acquire() as conn:
        outcome = await apply_webhook(conn, rt.catalog, webhook)
    failpoints.hit("billing.after_commit", webhook.id)
    if outcome.changes:
        rt.outbox_wakeup.set()
    WEBHOOKS.labels(outcome.status).inc()
    log.info(f"webhook.{outcome.status}", extra={"webhook_id": webhook.id, "type": webhook.type,
                                                  "note": outcome.note})
