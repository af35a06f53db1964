"""The operator's billing actions, called by `polar-billing webhooks …` (ops/cli.py): no argument parsing here."""
from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from nats.js import JetStreamContext

from shared.messaging import outbox as outbox_loop
from shared.plans import PlanCatalog

from . import repository as repo
from .apply_webhook import apply_webhook
from .outbox import BILLING_EVENTS
from .polar_models import Webhook


@dataclass
class Replayed:
    webhook_id: str
    outcome: str  # applied | skipped | duplicate | missing | failed
    detail: str | None = None


async def replay(conn: asyncpg.Connection, js: JetStreamContext, catalog: PlanCatalog, ids: list[str], *,
                 failed: bool = False) -> list[Replayed]:
    """Re-apply logged webhooks (monotonic: an older one never regresses newer state), each in its own transaction,
    and publish the change events they produce. `failed`: also every webhook whose log row says failed."""
    if failed:
        ids = ids + [i for i in await repo.failed_webhook_ids(conn) if i not in ids]
    out = []
    for webhook_id in ids:
        row = await repo.get_webhook(conn, webhook_id)
        if row is None or row["payload"] is None:
            out.append(Replayed(webhook_id, "missing", "not in the webhook log (or its payload is past retention)"))
            continue
        try:
            outcome = await apply_webhook(conn, catalog, Webhook.parse(webhook_id, row["payload"]), replay=True)
            await outbox_loop.flush(BILLING_EVENTS, conn, js)
            out.append(Replayed(webhook_id, outcome.status, outcome.note))
        except Exception as exc:  # noqa: BLE001 - reported per id; the others still run
            error = f"{type(exc).__name__}: {exc}"
            await repo.record_failure(conn, webhook_id, row["type"], row["payload"], error, row["attempts"] + 1)
            out.append(Replayed(webhook_id, "failed", error[:500]))
    return out
