"""Every JetStream stream, durable consumer and subject of the system, declared once and applied idempotently.

Services apply it at start-up and only bind to what it created: a consumer that declared its own stream (FastStream's
`JStream` does by default) would silently rewrite the stream's config with its own defaults (docs/nats.md §2).
"""
from __future__ import annotations

import asyncio
import dataclasses
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
from nats.js.errors import APIError, BadRequestError, NotFoundError
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
        # Webhooks are applied concurrently (monotonic, locked per user: order cannot matter, docs/nats.md §5); this
        # only caps the deployment's messages in flight: keep it >= billing instances x the `concurrency` of
        # billing's @consumes (32): a fetch at the cap waits out its whole timeout (docs/nats.md §4).
        max_ack_pending=256,
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
        # A batch commits in well under a second (bench/usage_ingest.py); an instance that died holding one hands
        # it to the others after this long.
        ack_wait=30,
        max_deliver=-1,
        # >= batches in flight x the batch size (usage-sync instances x USAGE_CONSUMERS x USAGE_BATCH_SIZE), or a
        # fetch at the cap waits out its whole timeout for a partial batch (docs/nats.md §4): room for 8 x 1000.
        max_ack_pending=16_000,
    ),
)
DURABLES: tuple[Durable, ...] = (BILLING_WEBHOOKS, USAGE_SYNC)

STREAM_UPDATE_IN_USE = 10058  # "stream name already in use with a different configuration"
CONSUMER_REPLICAS_ABOVE_STREAM = 10126  # "consumer config replica count exceeds parent stream"
STREAM_REPLICAS_NOT_SUPPORTED = 10074  # "replicas > 1 not supported in non-clustered mode"
NO_SUITABLE_PEERS = 10005  # "no suitable peers for placement": fewer nodes than replicas
SCALE_WAIT = 30.0


async def _replicas_now(js: JetStreamContext, durable: Durable) -> int | None:
    try:
        return (await js.consumer_info(durable.stream, durable.name)).config.num_replicas
    except NotFoundError:
        return None


async def ensure_topology(js: JetStreamContext, replicas: int | None = None) -> None:
    """Create or reconcile every stream and durable. Running it again with the same definitions changes nothing.

    `replicas` (NATS_STREAM_REPLICAS) sets `num_replicas` of every stream and durable, raising or lowering it in
    place. None keeps what each has (new ones get 1, or their stream's): a process started without the setting
    must not scale an R3 deployment down to R1, the way a FastStream JStream would rewrite it (docs/nats.md §2).
    """
    if replicas is not None:
        # A consumer may not have more replicas than its stream: lower consumers before their streams.
        for durable in DURABLES:
            now = await _replicas_now(js, durable)
            if now is not None and now > replicas:
                await js.add_consumer(durable.stream, dataclasses.replace(durable.config, num_replicas=replicas))
    stream_replicas: dict[str, int] = {}
    for cfg in STREAMS:
        try:
            current = (await js.stream_info(cfg.name)).config.num_replicas
        except NotFoundError:
            current = None
        want = dataclasses.replace(cfg, num_replicas=replicas or current or 1)
        stream_replicas[cfg.name] = want.num_replicas or 1
        try:
            await _put_stream(js, want)
        except APIError as exc:
            if replicas and replicas > 1 and exc.err_code in (STREAM_REPLICAS_NOT_SUPPORTED, NO_SUITABLE_PEERS):
                raise RuntimeError(f"NATS_STREAM_REPLICAS={replicas} needs a JetStream cluster of at least "
                                   f"{replicas} nodes: {exc.description}") from exc
            raise
    for durable in DURABLES:
        n = replicas or await _replicas_now(js, durable) or stream_replicas[durable.stream]
        await _put_consumer(js, dataclasses.replace(durable.config, num_replicas=n), durable.stream)


async def _put_stream(js: JetStreamContext, want: Stream) -> None:
    try:
        await js.add_stream(want)  # the same config again changes nothing
    except BadRequestError as exc:
        if exc.err_code != STREAM_UPDATE_IN_USE:
            raise
        await js.update_stream(want)
        log.warning("nats.stream_updated", extra={"stream": want.name, "replicas": want.num_replicas})


async def _put_consumer(js: JetStreamContext, config: ConsumerConfig, stream: str) -> None:
    """Same name => the server updates the editable fields, num_replicas included (checked on 2.15.1, 1 <-> 3);
    nats-py's pull_subscribe never would. A stream's scale-up is applied by its leader a moment after the update
    answered: until then the consumer's raise is refused (10126), so wait for it."""
    deadline = asyncio.get_running_loop().time() + SCALE_WAIT
    while True:
        try:
            await js.add_consumer(stream, config)
            return
        except BadRequestError as exc:
            if exc.err_code != CONSUMER_REPLICAS_ABOVE_STREAM or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.2)


def servers(nats_url: str) -> list[str]:
    """`NATS_URL` may name several servers, comma-separated; nats-py wants a list."""
    return [u.strip() for u in nats_url.split(",") if u.strip()]


async def apply(nats_url: str, replicas: int | None = None) -> None:
    """Apply the topology over a short-lived connection (used before a broker starts)."""
    nc = await nats.connect(servers(nats_url), connect_timeout=5, max_reconnect_attempts=3, name="topology")
    try:
        await ensure_topology(nc.jetstream(timeout=10), replicas)
    finally:
        await nc.close()
