"""The one dead-letter store: a row in `dead_letters` (the record the operator reads) and a copy on
`deadletter.<consumer>.<original subject>` in the DEAD_LETTERS stream (for whoever watches it).

The row keeps the original bytes as `bytea` and the headers and reason with NUL characters replaced, so no payload can
make the store refuse it (PostgreSQL's text and jsonb cannot hold U+0000).
"""
from __future__ import annotations

import logging

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import Counter

from shared import topology
from shared.db import repository as repo

from .publish import publish

log = logging.getLogger(__name__)

DEAD_LETTERED = Counter("messaging_dead_lettered_total", "Messages dead-lettered, by consumer", ["consumer"])


def _clean(text: str, limit: int) -> str:
    return text.replace("\x00", "\ufffd")[:limit]


async def dead_letter(pool: asyncpg.Pool, js: JetStreamContext, consumer: str, msg: Msg, reason: str) -> None:
    """Record `msg` as dead with its reason. Raises only if the row could not be written (the caller retries later)."""
    meta = msg.metadata
    headers = {_clean(k, 200): _clean(v, 2000) for k, v in (msg.headers or {}).items()}
    reason = _clean(reason, 2000)
    await repo.insert_dead_letter(pool, source=consumer, subject=msg.subject, msg_id=headers.get("Nats-Msg-Id"),
                                  stream_seq=meta.sequence.stream, headers=headers, payload=msg.data, reason=reason,
                                  deliveries=meta.num_delivered)
    DEAD_LETTERED.labels(consumer).inc()
    kept = {k: v for k, v in headers.items() if not k.startswith("Nats-")}
    try:
        await publish(js, topology.dead_letter_subject(consumer, msg.subject), msg.data, stream=topology.DEAD_LETTERS.name,
                      msg_id=f"{consumer}:{meta.stream}:{meta.sequence.stream}",
                      headers={**kept, "x-dead-letter-reason": reason[:1000],
                               "x-deliveries": str(meta.num_delivered or 1)})
    except Exception:  # noqa: BLE001 - the row is the record; the subject is a courtesy
        log.warning("deadletter.publish_failed", extra={"consumer": consumer, "subject": msg.subject})
    log.warning("message.dead_lettered", extra={"consumer": consumer, "subject": msg.subject,
                                                "stream_seq": meta.sequence.stream, "reason": reason[:300]})
