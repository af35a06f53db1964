"""usage_thresholds → `billing.event.usage.threshold`: each crossing once (Nats-Msg-Id per user, limit, period and
percent), published by the shared outbox loop a moment after the batch that crossed it."""
from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from polar_billing_client.contracts import UsageThreshold
from polar_billing_client.subjects import USAGE_THRESHOLD

from shared import topology
from shared.messaging import outbox
from shared.messaging.outbox import Outgoing

from . import repository as repo
from .runtime import UsageSyncRuntime

EVERY_SECONDS = 0.5


async def _take(conn: asyncpg.Connection) -> list[Outgoing]:
    return [Outgoing(subject=USAGE_THRESHOLD, stream=topology.BILLING_EVENTS.name,
                     msg_id=f"threshold:{r['user_id']}:{r['limit_name']}:{r['period_start'].isoformat()}:{r['percent']}",
                     data=UsageThreshold(user_id=r["user_id"], limit=r["limit_name"], percent=r["percent"],
                                         used=r["used"], limit_value=r["limit_value"], resets_at=r["resets_at"]),
                     key=r)
            for r in await repo.take_unpublished_thresholds(conn)]


async def _mark(conn: asyncpg.Connection, items: Sequence[Outgoing]) -> None:
    await repo.mark_thresholds_published(conn, [item.key for item in items])


THRESHOLDS = outbox.Outbox("usage_thresholds", _take, _mark)


async def loop(rt: UsageSyncRuntime) -> None:
    await outbox.run(THRESHOLDS, rt, every=EVERY_SECONDS)
