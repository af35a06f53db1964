"""Billing's NATS entry points: one function per message kind. No SQL here."""
from __future__ import annotations

import logging

from faststream.nats.message import NatsMessage
from prometheus_client import Counter

from shared import failpoints, topology
from shared.retry import settle_failure
from shared.service import Runtime

from . import repository as repo
from .polar_models import redact
from .webhooks import parse_envelope, process_webhook

log = logging.getLogger(__name__)

WEBHOOKS = Counter("billing_webhooks_total", "Webhooks consumed, by outcome", ["outcome"])


async def on_webhook(msg: NatsMessage, rt: Runtime) -> None:
    """Consume one stored webhook: apply and commit (change events go to the outbox in the same transaction), ack."""
    webhook_id = msg.headers.get("Nats-Msg-Id") or msg.headers.get("webhook-id") or ""
    assert rt.pool is not None
    try:
        async with rt.pool.acquire() as conn:
            outcome = await process_webhook(conn, rt.extra["catalog"], webhook_id, msg.body)
    except Exception as exc:  # noqa: BLE001 - settled below: retried or dead-lettered, never lost
        action = await settle_failure(msg, exc, lambda e, n: dead_letter(rt, msg, webhook_id, e, n))
        WEBHOOKS.labels(action).inc()
        log.warning("webhook.failed", extra={"webhook_id": webhook_id, "subject": msg.raw_message.subject,
                                             "action": action, "error": f"{type(exc).__name__}: {exc}"[:500]})
        return
    failpoints.hit("billing.after_commit", webhook_id)
    await msg.ack()
    if outcome.changes:
        rt.extra["outbox_wakeup"].set()
    WEBHOOKS.labels(outcome.status).inc()
    log.info(f"webhook.{outcome.status}", extra={"webhook_id": webhook_id, "subject": msg.raw_message.subject,
                                                  "note": outcome.note})


async def dead_letter(rt: Runtime, msg: NatsMessage, webhook_id: str, exc: BaseException, attempts: int) -> None:
    """The log row says `failed` with the error; the original goes to the dead-letter subject with its reason."""
    error = f"{type(exc).__name__}: {exc}"
    try:
        raw, env = parse_envelope(msg.body)
        event_type, payload = env.type, raw
    except Exception:  # noqa: BLE001 - an unparseable body is still logged and dead-lettered
        event_type, payload = msg.raw_message.subject.removeprefix(f"{topology.WEBHOOK_SUBJECT_PREFIX}."), None
    assert rt.pool is not None
    async with rt.pool.acquire() as conn:
        await repo.record_failure(conn, webhook_id, event_type, redact(payload) if payload else None, error, attempts)
    await rt.broker.publish(
        msg.body,
        subject=topology.dead_letter_subject("billing", msg.raw_message.subject),
        stream=topology.DEAD_LETTERS.name,
        headers={"Nats-Msg-Id": f"billing:{webhook_id}:{attempts}", "webhook-id": webhook_id,
                 "x-dead-letter-reason": error[:1000], "x-deliveries": str(attempts)},
        timeout=5.0,
    )
