"""The one way a service publishes to JetStream: with a `Nats-Msg-Id`, so a retry after a lost PubAck is stored once
(docs/nats.md §7), and only to a named stream, so the answer is a PubAck and not a fire-and-forget core publish."""
from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import PubAck
from prometheus_client import Counter
from pydantic import BaseModel

PUBLISHED = Counter("messaging_published_total", "Messages stored in JetStream, by stream and outcome",
                    ["stream", "outcome"])
TIMEOUT = 5.0


async def publish(js: JetStreamContext, subject: str, data: bytes | BaseModel, *, msg_id: str, stream: str,
                  headers: dict[str, str] | None = None, timeout: float = TIMEOUT) -> PubAck:
    """Store one message and return its PubAck (`duplicate` when the id was seen inside the stream's window)."""
    body = data.model_dump_json().encode() if isinstance(data, BaseModel) else data
    hdrs = {"content-type": "application/json", **(headers or {}), "Nats-Msg-Id": msg_id}
    try:
        ack = await js.publish(subject, body, stream=stream, headers=hdrs, timeout=timeout)
    except Exception:
        PUBLISHED.labels(stream, "failed").inc()
        raise
    PUBLISHED.labels(stream, "duplicate" if ack.duplicate else "stored").inc()
    return ack
