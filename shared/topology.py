"""Every JetStream stream, durable consumer and subject of the system, declared once and applied idempotently.

Services apply it at start-up and only bind to what it created: a consumer that declared its own stream (FastStream's
`JStream` does by default) would silently rewrite the stream's config with its own defaults (docs/nats.md §2).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import nats
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError
from polar_billing_client.subjects import (
    BILLING_EVENT_PREFIX,
    BILLING_EVENTS_STREAM,
    USAGE_STREAM,
    USAGE_SUBJECT_PREFIX,
)

log = logging.getLogger(__name__)

DAY = 24 * 3600

# --- subjects -------------------------------------------------------------------------------------------------
WEBHOOK_SUBJECT_PREFIX = "polar.webhook"  # polar.webhook.<event type>
DEAD_LETTER_PREFIX = "deadletter"  # deadletter.<consumer>.<original subject>

RPC_QUEUE = "billing"


def webhook_subject(event_type: str) -> str:
    return f"{WEBHOOK_SUBJECT_PREFIX}.{event_type}"


def dead_letter_subject(consumer: str, subject: str) -> str:
    return f"{DEAD_LETTER_PREFIX}.{consumer}.{subject}"


# --- streams --------------------------------------------------------------------------------------------------
@dataclass
class Stream(StreamConfig):
    """A stream's config whose name is always set (nats-py's field is optional)."""

    name: str = ""


POLAR_WEBHOOKS = Stream(
    name="POLAR_WEBHOOKS",
    subjects=[f"{WEBHOOK_SUBJECT_PREFIX}.>"],
    storage=StorageType.FILE,
    retention=RetentionPolicy.LIMITS,
    discard=DiscardPolicy.OLD,
    max_age=30 * DAY,
    # Polar retries one event for ~17–34 min; a day covers that with room. Later manual redeliveries are caught by
    # the webhook_log primary key.
    duplicate_window=DAY,
)
USAGE = Stream(
    name=USAGE_STREAM,
    subjects=[f"{USAGE_SUBJECT_PREFIX}.>"],
    storage=StorageType.FILE,
    retention=RetentionPolicy.LIMITS,
    discard=DiscardPolicy.OLD,
    max_age=14 * DAY,
    duplicate_window=2 * 3600,  # a chat service's retries of one event; the ledger's primary key covers the rest
)
BILLING_EVENTS = Stream(
    name=BILLING_EVENTS_STREAM,
    subjects=[f"{BILLING_EVENT_PREFIX}.>"],
    storage=StorageType.FILE,
    retention=RetentionPolicy.LIMITS,
    discard=DiscardPolicy.OLD,
    max_age=7 * DAY,
    duplicate_window=3600,
)
DEAD_LETTERS = Stream(
    name="DEAD_LETTERS",
    subjects=[f"{DEAD_LETTER_PREFIX}.>"],
    storage=StorageType.FILE,
    retention=RetentionPolicy.LIMITS,
    discard=DiscardPolicy.OLD,
    max_age=30 * DAY,
    duplicate_window=3600,
)
STREAMS: tuple[Stream, ...] = (POLAR_WEBHOOKS, USAGE, BILLING_EVENTS, DEAD_LETTERS)


# --- durable consumers ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Durable:
    stream: str
    config: ConsumerConfig

    @property
    def name(self) -> str:
        assert self.config.durable_name
        return self.config.durable_name


BILLING_WEBHOOKS = Durable(
    POLAR_WEBHOOKS.name,
    ConsumerConfig(
        name="billing",
        durable_name="billing",
        filter_subject=f"{WEBHOOK_SUBJECT_PREFIX}.>",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=10,  # a webhook applies in milliseconds; a worker that died holding one is replaced within 10 s
        max_deliver=-1,  # the app decides when to dead-letter; an outage must never exhaust deliveries
        max_ack_pending=1,  # one in flight: stream order holds, retries included (docs/nats.md §5)
    ),
)
USAGE_SYNC = Durable(
    USAGE.name,
    ConsumerConfig(
        name="usage-sync",
        durable_name="usage-sync",
        filter_subject=f"{USAGE_SUBJECT_PREFIX}.>",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=60,
        max_deliver=-1,
        max_ack_pending=4000,  # >= 2 x the batch size, or batches never fill (docs/nats.md §4)
    ),
)
DURABLES: tuple[Durable, ...] = (BILLING_WEBHOOKS, USAGE_SYNC)

STREAM_UPDATE_IN_USE = 10058  # "stream name already in use with a different configuration"


async def ensure_topology(js: JetStreamContext) -> None:
    """Create or reconcile every stream and durable. Running it again with the same definitions changes nothing."""
    for cfg in STREAMS:
        try:
            await js.add_stream(cfg)
        except BadRequestError as exc:
            if exc.err_code != STREAM_UPDATE_IN_USE:
                raise
            await js.update_stream(cfg)
            log.warning("nats.stream_updated", extra={"stream": cfg.name})
    for durable in DURABLES:
        # Same name => the server updates the editable fields; nats-py's pull_subscribe never would.
        await js.add_consumer(durable.stream, durable.config)


def servers(nats_url: str) -> list[str]:
    """`NATS_URL` may name several servers, comma-separated; nats-py wants a list."""
    return [u.strip() for u in nats_url.split(",") if u.strip()]


async def apply(nats_url: str) -> None:
    """Apply the topology over a short-lived connection (used before a broker starts)."""
    nc = await nats.connect(servers(nats_url), connect_timeout=5, max_reconnect_attempts=3, name="topology")
    try:
        await ensure_topology(nc.jetstream(timeout=10))
    finally:
        await nc.close()
