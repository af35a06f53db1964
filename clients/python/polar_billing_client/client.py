"""The chat service's Python client: publish usage, ask billing (limits, status, links).

    client = await BillingClient.connect("nats://127.0.0.1:4222")
    decision = await client.check("usr_1", model="gpt-4o", thread_id="t1")
    if not decision.allowed: ...                       # decision.reason, decision.resets_at
    await client.track_usage(user_id="usr_1", thread_id="t1", model="gpt-4o", input_tokens=812, output_tokens=96,
                             event_id=response_id)   # the same event_id on every retry of this response

When billing does not answer, each call follows its policy: `raise` (default: BillingUnavailable), `allow` or
`deny` (for check / reserve only); every degraded decision is logged and counted.
"""
from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Literal, TypeVar

import nats
import nats.errors
from nats.aio.client import Client
from nats.js.api import PubAck
from pydantic import BaseModel

from . import links
from .contracts import (
    CheckoutRequest,
    CheckReply,
    CheckRequest,
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
    UsageEvent,
)
from .subjects import USAGE_STREAM, rpc_subject, usage_subject

log = logging.getLogger(__name__)
try:  # metrics are optional: `pip install polar-billing-client[metrics]`
    from prometheus_client import Counter

    DEGRADED: Counter | None = Counter("billing_client_degraded_total", "Decisions made without billing's answer",
                                       ["verb", "policy"])
except ImportError:  # pragma: no cover - exercised where prometheus_client is absent
    DEGRADED = None
Policy = Literal["raise", "allow", "deny"]
R = TypeVar("R", bound=BaseModel)


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

# A user id becomes a subject token: no whitespace, wildcards or dots.
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_\-:@+=]+$")


def new_event_id() -> str:
    """One per AI response; keep it and pass it again when retrying the publish."""
    return f"ev_{uuid.uuid4().hex}"


class BillingClient:
    def __init__(self, nc: Client, *, publish_timeout: float = 5.0, timeout: float = 2.0,
                 on_unavailable: Policy = "raise", public_base_url: str | None = None,
                 status_page_secret: str | None = None) -> None:
        self.nc = nc
        self.public_base_url = public_base_url
        self.status_page_secret = status_page_secret
        self.js = nc.jetstream(timeout=publish_timeout)
        self.publish_timeout = publish_timeout
        self.timeout = timeout
        self.on_unavailable = on_unavailable

    @classmethod
    async def connect(cls, servers: str | list[str], **options) -> BillingClient:
        """options: the client's own (timeout, on_unavailable, public_base_url, status_page_secret, publish_timeout)."""
        nc = await nats.connect(servers, name="billing-client", max_reconnect_attempts=-1)
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
        """Publish one usage event and wait until JetStream stored it. Raises on a bad event (ValueError /
        pydantic.ValidationError) or when the broker did not confirm (nats.errors.TimeoutError: retry with the
        same event_id; a duplicate is recognised and stored once)."""
        if not _SUBJECT_TOKEN.match(user_id):
            raise ValueError("user_id may only hold letters, digits and _-:@+=")
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
            msg = await self.nc.request(rpc_subject(verb), req.model_dump_json(exclude_none=True).encode(),
                                        timeout=timeout or self.timeout)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError) as exc:
            raise BillingUnavailable(f"billing.rpc.{verb}: {type(exc).__name__}") from exc
        if msg.data.startswith(b'{"error"'):
            raise BillingError(ErrorBody.model_validate(json.loads(msg.data)["error"]))
        return reply_type.model_validate_json(msg.data)

    def _degraded(self, verb: str, policy: Policy, user_id: str, exc: BillingUnavailable) -> CheckReply:
        if DEGRADED is not None:
            DEGRADED.labels(verb, policy).inc()
        log.warning("billing.degraded_decision", extra={"verb": verb, "policy": policy, "user_id": user_id,
                                                         "error": str(exc)})
        empty = LimitState(used=0, limit=None, resets_at=None)
        return CheckReply(allowed=policy == "allow", plan="unknown", reason=None if policy == "allow" else "unavailable",
                          resets_at=None, limits={"tokens_per_month": empty, "threads_per_month": empty,
                                                  "messages_per_day": empty}, overage=False)

    async def check(self, user_id: str, *, model: str | None = None, thread_id: str | None = None,
                    custom_key: bool = False, estimated_tokens: int | None = None, timeout: float | None = None,
                    on_unavailable: Policy | None = None) -> CheckReply:
        req = CheckRequest(user_id=user_id, model=model, thread_id=thread_id, custom_key=custom_key,
                           estimated_tokens=estimated_tokens)
        try:
            return await self._request("check", req, CheckReply, timeout)
        except BillingUnavailable as exc:
            policy = on_unavailable or self.on_unavailable
            if policy == "raise":
                raise
            return self._degraded("check", policy, user_id, exc)

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
            return await self._request("reserve", req, ReserveReply, timeout)
        except BillingUnavailable as exc:
            policy = on_unavailable or self.on_unavailable
            if policy == "raise":
                raise
            return ReserveReply(**self._degraded("reserve", policy, user_id, exc).model_dump(), reservation_id=None)

    async def release(self, reservation_id: str, *, timeout: float | None = None) -> bool:
        return (await self._request("release", ReleaseRequest(reservation_id=reservation_id), ReleaseReply,
                                    timeout)).released

    async def status(self, user_id: str, *, timeout: float | None = None) -> StatusReply:
        return await self._request("status", StatusRequest(user_id=user_id), StatusReply, timeout)

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
        return await self.js.publish(
            usage_subject(event.user_id),
            event.model_dump_json().encode(),
            stream=USAGE_STREAM,
            headers={"Nats-Msg-Id": event.event_id, "content-type": "application/json"},
            timeout=self.publish_timeout,
        )
