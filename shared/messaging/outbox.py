"""The one outbox loop: rows written in the same transaction as the change they announce are taken
`FOR UPDATE SKIP LOCKED`, published (each with its own `Nats-Msg-Id`, so a re-publish after a crash is stored once),
and marked published in that transaction. Two processes never publish the same row at once; a crash between publish
and commit publishes it again, and JetStream drops the repeat.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from nats.js import JetStreamContext
from prometheus_client import Counter
from pydantic import BaseModel

from shared.runtime import Runtime

from .publish import publish

log = logging.getLogger(__name__)

PUBLISHED = Counter("outbox_published_total", "Outbox rows published, by outbox", ["outbox"])
FAILED = Counter("outbox_publish_failures_total", "Outbox rounds that failed (the rows wait), by outbox", ["outbox"])


@dataclass(frozen=True)
class Outgoing:
    subject: str
    stream: str
    msg_id: str
    data: bytes | BaseModel
    key: Any  # what `mark` needs to find the row again


@dataclass(frozen=True)
class Outbox:
    name: str
    take: Callable[[asyncpg.Connection], Awaitable[Sequence[Outgoing]]]  # locks the rows it returns
    mark: Callable[[asyncpg.Connection, Sequence[Outgoing]], Awaitable[None]]


async def flush(outbox: Outbox, conn: asyncpg.Connection, js: JetStreamContext) -> int:
    """Publish one round and mark it; on any failure nothing is marked and the next round sends it again."""
    async with conn.transaction():
        items = await outbox.take(conn)
        for item in items:
            await publish(js, item.subject, item.data, msg_id=item.msg_id, stream=item.stream)
            log.info("outbox.published", extra={"outbox": outbox.name, "subject": item.subject,
                                                "msg_id": item.msg_id})
        if items:
            await outbox.mark(conn, items)
    PUBLISHED.labels(outbox.name).inc(len(items))
    return len(items)


async def run(outbox: Outbox, rt: Runtime[Any], *, every: float, wakeup: asyncio.Event | None = None) -> None:
    """Until the service stops: drain the outbox, then wait for `wakeup` or `every` seconds."""
    while not rt.stopping.is_set():
        try:
            async with rt.pool.acquire() as conn:
                while await flush(outbox, conn, rt.js):
                    pass
        except Exception as exc:  # noqa: BLE001 - NATS or PostgreSQL away: the rows wait for the next round
            FAILED.labels(outbox.name).inc()
            log.warning("outbox.publish_failed", extra={"outbox": outbox.name,
                                                        "error": f"{type(exc).__name__}: {exc}"[:300]})
        if wakeup is None:
            await asyncio.sleep(every)
            continue
        try:
            await asyncio.wait_for(wakeup.wait(), every)
        except TimeoutError:
            pass
        wakeup.clear()
