"""billing_outbox → BILLING_EVENTS: the change events a webhook's transaction wrote, published by the shared outbox
loop (woken after each applied webhook, and every second anyway)."""
from __future__ import annotations

import json
from collections.abc import Sequence

import asyncpg

from shared import topology
from shared.messaging import outbox
from shared.messaging.outbox import Outgoing

from . import repository as repo
from .runtime import BillingRuntime

EVERY_SECONDS = 1.0


async def _take(conn: asyncpg.Connection) -> list[Outgoing]:
    return [Outgoing(subject=r["subject"], stream=topology.BILLING_EVENTS.name, msg_id=r["msg_id"],
                     data=json.dumps(r["payload"]).encode(), key=r["id"])
            for r in await repo.take_outbox(conn)]


async def _mark(conn: asyncpg.Connection, items: Sequence[Outgoing]) -> None:
    await repo.mark_published(conn, [item.key for item in items])


BILLING_EVENTS = outbox.Outbox("billing_events", _take, _mark)


async def loop(rt: BillingRuntime) -> None:
    await outbox.run(BILLING_EVENTS, rt, every=EVERY_SECONDS, wakeup=rt.outbox_wakeup)
