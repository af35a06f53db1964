"""The one way a service publishes to JetStream: with a `Nats-Msg-Id`, so a retry after a lost PubAck is stored once
(docs/nats.md §7), and only to a named stream, so the answer is a PubAck and not a fire-and-forget core publish.

`timeout` bounds the whole call. Within it a publish that meets no responders or no answer (a stream leader lost,
an election under way, the connection moving to another server) is retried with the same id: the client package's
`publish_stored`, so services and the chat service's client retry the same way."""
from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import PubAck
from polar_billing_client.client import publish_stored
from prometheus_client import Counter
from pydantic import BaseModel

PUBLISHED = Counter("messaging_published_total", "Messages stored in JetStream, by stream and outcome",
                    ["stream", "outcome"])
TIMEOUT = 5.0
# One attempt's wait: a PubAck takes milliseconds, so a silent attempt most likely went to a leader that is gone.
ATTEMPT_TIMEOUT = 2.0


async def publish(js: JetStreamContext, subject: str, data: bytes | BaseModel, *, msg_id: str, stream: str,
                  headers: dict[str, str] | None = None, timeout: float = TIMEOUT) -> PubAck:
    """Store one message and return its PubAck (`duplicate` when the id was seen inside the stream's window)."""
    body = data.model_dump_json().encode() if isinstance(data, BaseModel) else data
    hdrs = {"content-type": "application/json", **(headers or {}), "Nats-Msg-Id": msg_id}
    try:
        ack = await publish_stored(js, subject, body, stream=stream, headers=hdrs,
                                   attempt_timeout=min(ATTEMPT_TIMEOUT, timeout), retry_for=timeout)
    except Exception:
        PUBLISHED.labels(stream, "failed").inc()
        raise
    PUBLISHED.labels(stream, "duplicate" if ack.duplicate else "stored").inc()
    return ack
