"""The chat service's Python client: publish usage, ask billing (limits, status, links).

    client = await BillingClient.connect("nats://127.0.0.1:4222")
    decision = await client.check("usr_1", model="gpt-4o", thread_id="t1")
    if not decision.allowed: ...                       # decision.reason, decision.resets_at
    await client.track_usage(user_id="usr_1", thread_id="t1", model="gpt-4o", input_tokens=812, output_tokens=96,
                             event_id=response_id)   # the same event_id on every retry of this response

When billing does not answer, check and reserve follow the client's (or the call's) `Unavailable` policy: raise
BillingUnavailable (the default), allow, deny, or reuse the user's last answer while it is fresh enough; every degraded
decision says so in `decision.degraded`, and is logged and counted.

    client = await BillingClient.connect(url, on_unavailable=Unavailable(
        "deny", last_known_max_age=300, by_reason={"messages_per_day": "allow"}))

The chat service follows plan changes and usage thresholds through its own durable consumer:

    async for event in client.events(durable="chat-app"):   # SubscriptionChanged | UsageThreshold
        ...                                                  # acked when the loop body returns
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal, TypeVar

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError
from pydantic import BaseModel

from . import links
from .contracts import (
    CheckoutRequest,
    CheckReply,
    CheckRequest,
    Degraded,
    ErrorBody,
    LimitState,
    LinkReply,
    PortalRequest,
    ReleaseReply,
    ReleaseRequest,
    ReserveReply,
    ReserveRequest,
    StatusReply,
    StatusRequest,
    SubscriptionChanged,
    UsageEvent,
    UsageQuery,
    UsageReport,
    UsageThreshold,
)
from .subjects import (
    BILLING_EVENT_PREFIX,
    BILLING_EVENTS_STREAM,
    SUBSCRIPTION_CHANGED,
    USAGE_STREAM,
    USAGE_THRESHOLD,
    rpc_subject,
    usage_subject,
)

log = logging.getLogger(__name__)
try:  # metrics are optional: `pip install polar-billing-client[metrics]`
    from prometheus_client import Counter

    DEGRADED: Counter | None = Counter("billing_client_degraded_total", "Decisions made without billing's answer",
                                       ["verb", "policy"])
except ImportError:  # pragma: no cover - exercised where prometheus_client is absent
    DEGRADED = None
Fallback = Literal["raise", "allow", "deny"]
R = TypeVar("R", bound=BaseModel)
LAST_KNOWN_USERS = 10_000  # answers kept for `last_known` (least recently used go first)
BillingEvent = SubscriptionChanged | UsageThreshold


@dataclass(frozen=True)
class Unavailable:
    """What check and reserve decide when billing does not answer in time.

    - `fallback`: "raise" (BillingUnavailable), "allow" or "deny".
    - `last_known_max_age` (seconds): first reuse the user's last answer from billing if it is at most this old.
    - `by_reason`: for a reused answer that refused, per limit: "allow" to fail open (say `messages_per_day`),
      "deny" to keep the refusal (say `tokens_per_month`, the default for every reason).
    """

    fallback: Fallback = "raise"
    last_known_max_age: float | None = None
    by_reason: Mapping[str, Literal["allow", "deny"]] = field(default_factory=dict)


Policy = Fallback | Unavailable


def _policy(p: Policy) -> Unavailable:
    return p if isinstance(p, Unavailable) else Unavailable(p)


class BillingError(Exception):
    """Billing answered with an error: `code`, `message`, `field`, `retry_after` as in the wire contract."""

    def __init__(self, body: ErrorBody) -> None:
        super().__init__(f"{body.code}: {body.message}")
        self.code, self.message, self.field, self.retry_after = body.code, body.message, body.field, body.retry_after


class BillingUnavailable(Exception):
    """Billing did not answer in time (or no billing process is running)."""


class LimitExceeded(Exception):
    """Raised by `require()`: the user may not have this response, with the limit that binds and when it resets."""

    def __init__(self, decision: CheckReply) -> None:
        super().__init__(f"{decision.reason} (resets at {decision.resets_at})")
        self.limit, self.resets_at, self.decision = decision.reason, decision.resets_at, decision


# What a JetStream publish meets while a stream has no leader (an election after a node is lost takes ~5-10 s) or
# while the connection moves to another server: no responders, no answer, JetStream "temporarily unavailable" (503).
PUBLISH_RETRYABLE = (asyncio.TimeoutError, nats.errors.NoRespondersError, NoStreamResponseError,
                     ServiceUnavailableError, nats.errors.ConnectionReconnectingError,
                     nats.errors.StaleConnectionError)
# A clustered stream answers 409 while an earlier attempt with the same id is still being replicated: asked again a
# moment later it answers that attempt's PubAck (duplicate).
DUPLICATE_IN_PROCESS = 10158


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, PUBLISH_RETRYABLE) or (isinstance(exc, APIError) and exc.err_code == DUPLICATE_IN_PROCESS)


async def publish_stored(js: JetStreamContext, subject: str, body: bytes, *, stream: str, headers: dict[str, str],
                         attempt_timeout: float, retry_for: float) -> PubAck:
    """Publish until JetStream stored the message or `retry_for` seconds passed. Every attempt carries the same
    headers, `Nats-Msg-Id` included: an attempt whose PubAck was lost is recognised as a duplicate, never stored
    twice (docs/nats.md §7). Errors other than the retryable ones are raised at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    attempt = 0
    while True:
        attempt += 1
        left = deadline - loop.time()
        try:
            # nats-py adds its own header to the dict it is given: a fresh one per attempt.
            return await js.publish(subject, body, stream=stream, headers=dict(headers),
                                    timeout=max(0.05, min(attempt_timeout, left)))
        except Exception as exc:
            pause = min(0.05 * 2 ** (attempt - 1), 0.5)
            if not _retryable(exc) or loop.time() + pause >= deadline:
                raise
            # Debug only: during an election every publish in flight retries a dozen times.
            log.debug("billing.publish_retry", extra={"subject": subject, "attempt": attempt,
                                                      "error": type(exc).__name__})
        await asyncio.sleep(pause)


def new_event_id() -> str:
    """One per AI response; keep it and pass it again when retrying the publish."""
    return f"ev_{uuid.uuid4().hex}"


class BillingClient:
    def __init__(self, nc: Client, *, publish_timeout: float = 5.0, publish_retry_for: float = 15.0,
                 timeout: float = 2.0, on_unavailable: Policy = "raise", public_base_url: str | None = None,
                 status_page_secret: str | None = None) -> None:
        self.nc = nc
        self.public_base_url = public_base_url
        self.status_page_secret = status_page_secret
        self.js = nc.jetstream(timeout=publish_timeout)
        self.publish_timeout = publish_timeout  # one attempt's wait for the PubAck
        # How long a usage event is retried (same event id) before the call raises: longer than a NATS cluster's
        # leader election after a node is lost.
        self.publish_retry_for = max(publish_retry_for, publish_timeout)
        self.timeout = timeout
        self.on_unavailable = _policy(on_unavailable)
        self._last_known: OrderedDict[str, tuple[float, CheckReply]] = OrderedDict()

    @classmethod
    async def connect(cls, servers: str | list[str], **options) -> BillingClient:
        """`servers`: one URL, several comma-separated, or a list (the nodes of a cluster). options: the client's
        own (timeout, on_unavailable, public_base_url, status_page_secret, publish_timeout, publish_retry_for).
        The connection reconnects forever, to whichever server of the list (or of the cluster) answers."""
        if isinstance(servers, str):
            servers = [u.strip() for u in servers.split(",") if u.strip()]
        nc = await nats.connect(servers, name="billing-client", max_reconnect_attempts=-1, reconnect_time_wait=1)
        return cls(nc, **options)

    def status_page_url(self, user_id: str, ttl_seconds: int = links.DEFAULT_TTL) -> str:
        """A link to the user's status page, valid `ttl_seconds` (15 min), signed with STATUS_PAGE_SECRET."""
        if not (self.public_base_url and self.status_page_secret):
            raise ValueError("BillingClient needs public_base_url and status_page_secret for status page links")
        return links.status_page_url(self.public_base_url, self.status_page_secret, user_id, ttl_seconds)

    async def close(self) -> None:
        await self.nc.drain()

    async def track_usage(self, *, user_id: str, thread_id: str, model: str, input_tokens: int, output_tokens: int,
                          cached_input_tokens: int = 0, custom_key: bool = False, event_id: str | None = None,
                          occurred_at: datetime | None = None, reservation_id: str | None = None) -> PubAck:
        """Publish one usage event and wait until JetStream stored it, retrying (same event id) through a server
        loss or a leader election for up to `publish_retry_for` seconds. Raises on a bad event (ValueError /
        pydantic.ValidationError) or when the broker did not confirm in that time (nats.errors.TimeoutError,
        NoStreamResponseError: retry with the same event_id; a duplicate is recognised and stored once)."""
        event = UsageEvent(
            event_id=event_id or new_event_id(), user_id=user_id, thread_id=thread_id, model=model,
            input_tokens=input_tokens, output_tokens=output_tokens, cached_input_tokens=cached_input_tokens,
            custom_key=custom_key, occurred_at=occurred_at or datetime.now(UTC),
            reservation_id=reservation_id,
        )
        return await self.publish_usage(event)

    # --- requests to billing ---------------------------------------------------------------------------------------
    async def _request(self, verb: str, req: BaseModel, reply_type: type[R], timeout: float | None) -> R:
        try:
            body = req.model_dump_json(exclude_none=True, by_alias=True).encode()
            msg = await self.nc.request(rpc_subject(verb), body, timeout=timeout or self.timeout)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError) as exc:
            raise BillingUnavailable(f"billing.rpc.{verb}: {type(exc).__name__}") from exc
        if msg.data.startswith(b'{"error"'):
            raise BillingError(ErrorBody.model_validate(json.loads(msg.data)["error"]))
        return reply_type.model_validate_json(msg.data)

    def _remember(self, user_id: str, reply: CheckReply) -> None:
        decision = CheckReply(**{k: getattr(reply, k) for k in CheckReply.model_fields})  # a reserve's, too
        self._last_known[user_id] = (time.monotonic(), decision)
        self._last_known.move_to_end(user_id)
        while len(self._last_known) > LAST_KNOWN_USERS:
            self._last_known.popitem(last=False)

    def _without_billing(self, verb: str, user_id: str, policy: Unavailable, exc: BillingUnavailable) -> CheckReply:
        """The decision when billing did not answer: the last answer if fresh enough, else the fallback."""
        known = self._last_known.get(user_id)
        age = time.monotonic() - known[0] if known else None
        if known and policy.last_known_max_age is not None and age is not None and age <= policy.last_known_max_age:
            reply = known[1].model_copy(update={"degraded": Degraded(policy="last_known", age_seconds=round(age, 3))})
            if not reply.allowed and reply.reason and policy.by_reason.get(reply.reason) == "allow":
                reply = reply.model_copy(update={"allowed": True, "reason": None, "resets_at": None})
            label = "last_known"
        elif policy.fallback == "raise":
            raise exc
        else:
            empty = LimitState(used=0, limit=None, resets_at=None)
            allow = policy.fallback == "allow"
            reply = CheckReply(allowed=allow, plan="unknown", reason=None if allow else "unavailable", resets_at=None,
                               limits={"tokens_per_month": empty, "threads_per_month": empty,
                                       "messages_per_day": empty}, overage=False,
                               degraded=Degraded(policy=policy.fallback))
            label = policy.fallback
        if DEGRADED is not None:
            DEGRADED.labels(verb, label).inc()
        log.warning("billing.degraded_decision", extra={"verb": verb, "policy": label, "user_id": user_id,
                                                         "allowed": reply.allowed, "error": str(exc)})
        return reply

    async def check(self, user_id: str, *, model: str | None = None, thread_id: str | None = None,
                    custom_key: bool = False, estimated_tokens: int | None = None, timeout: float | None = None,
                    on_unavailable: Policy | None = None) -> CheckReply:
        req = CheckRequest(user_id=user_id, model=model, thread_id=thread_id, custom_key=custom_key,
                           estimated_tokens=estimated_tokens)
        try:
            reply = await self._request("check", req, CheckReply, timeout)
        except BillingUnavailable as exc:
            policy = _policy(on_unavailable) if on_unavailable else self.on_unavailable
            return self._without_billing("check", user_id, policy, exc)
        self._remember(user_id, reply)
        return reply

    async def require(self, user_id: str, **kwargs) -> CheckReply:
        """`check`, raising LimitExceeded when the answer is no."""
        decision = await self.check(user_id, **kwargs)
        if not decision.allowed:
            raise LimitExceeded(decision)
        return decision

    async def reserve(self, user_id: str, *, estimated_tokens: int, model: str | None = None,
                      thread_id: str | None = None, custom_key: bool = False, ttl_seconds: int = 300,
                      timeout: float | None = None, on_unavailable: Policy | None = None) -> ReserveReply:
        req = ReserveRequest(user_id=user_id, model=model, thread_id=thread_id, custom_key=custom_key,
                             estimated_tokens=estimated_tokens, ttl_seconds=ttl_seconds)
        try:
            reply = await self._request("reserve", req, ReserveReply, timeout)
        except BillingUnavailable as exc:
            policy = _policy(on_unavailable) if on_unavailable else self.on_unavailable
            decision = self._without_billing("reserve", user_id, policy, exc)
            return ReserveReply(**{k: getattr(decision, k) for k in CheckReply.model_fields}, reservation_id=None)
        self._remember(user_id, reply)
        return reply

    async def release(self, reservation_id: str, *, timeout: float | None = None) -> bool:
        return (await self._request("release", ReleaseRequest(reservation_id=reservation_id), ReleaseReply,
                                    timeout)).released

    async def status(self, user_id: str, *, timeout: float | None = None) -> StatusReply:
        return await self._request("status", StatusRequest(user_id=user_id), StatusReply, timeout)

    async def usage(self, user_id: str, *, from_: date | None = None, to: date | None = None,
                    group_by: Sequence[str] = (), limit: int | None = None,
                    timeout: float | None = None) -> UsageReport:
        """Where the user's tokens went, and what they cost: by day, model and / or thread (at most two), UTC days
        from `from_` (included) to `to` (not), by default the current billing period; `limit`: the top N models or
        threads by tokens, the rest as "other". Empty days are present as zeros."""
        req = UsageQuery(user_id=user_id, from_=from_, to=to, group_by=list(group_by), limit=limit)
        return await self._request("usage", req, UsageReport, timeout)

    async def checkout_url(self, user_id: str, plan: str, *, success_url: str | None = None,
                           return_url: str | None = None, timeout: float | None = None) -> LinkReply:
        req = CheckoutRequest(user_id=user_id, plan=plan, success_url=success_url, return_url=return_url)
        return await self._request("checkout", req, LinkReply, timeout or 15.0)

    async def portal_url(self, user_id: str, *, return_url: str | None = None,
                         timeout: float | None = None) -> LinkReply:
        """The customer-portal link: it carries a bearer token; redirect to it, never log or store it."""
        return await self._request("portal", PortalRequest(user_id=user_id, return_url=return_url), LinkReply,
                                   timeout or 15.0)

    async def publish_usage(self, event: UsageEvent) -> PubAck:
        return await publish_stored(self.js, usage_subject(event.user_id), event.model_dump_json().encode(),
                                    stream=USAGE_STREAM,
                                    headers={"Nats-Msg-Id": event.event_id, "content-type": "application/json"},
                                    attempt_timeout=self.publish_timeout, retry_for=self.publish_retry_for)

    # --- billing's events ------------------------------------------------------------------------------------------
    async def events(self, durable: str, *, batch: int = 50, from_start: bool = False
                     ) -> AsyncIterator[BillingEvent]:
        """Plan changes and usage thresholds, typed, through the chat service's own durable consumer on
        BILLING_EVENTS (created on first use; several processes with one `durable` share the events). Each event is
        acked when the loop body that received it returns; if the body raises, the event comes back after 30 s.
        A new durable starts with the events published from now on (`from_start=True`: the stream's 7 days)."""
        try:
            await self.js.consumer_info(BILLING_EVENTS_STREAM, durable)
        except NotFoundError:
            await self.js.add_consumer(BILLING_EVENTS_STREAM, ConsumerConfig(
                name=durable, durable_name=durable, filter_subject=f"{BILLING_EVENT_PREFIX}.>",
                ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_deliver=-1,
                deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW))
        sub = await self.js.pull_subscribe_bind(durable, BILLING_EVENTS_STREAM)
        try:
            while True:
                try:
                    msgs = await sub.fetch(batch, timeout=5)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except nats.errors.ConnectionClosedError:
                    raise
                except nats.errors.Error as exc:  # a server lost, a leader election: the connection reconnects
                    log.warning("billing.events_fetch_failed", extra={"error": type(exc).__name__})
                    await asyncio.sleep(1)
                    continue
                for m in msgs:
                    event: BillingEvent | None = None
                    try:
                        if m.subject == SUBSCRIPTION_CHANGED:
                            event = SubscriptionChanged.model_validate_json(m.data)
                        elif m.subject == USAGE_THRESHOLD:
                            event = UsageThreshold.model_validate_json(m.data)
                    except ValueError:
                        log.warning("billing.event_unreadable", extra={"subject": m.subject})
                    if event is not None:
                        yield event
                    await m.ack()  # also a kind this client does not know: a newer billing's, skipped
        finally:
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass
