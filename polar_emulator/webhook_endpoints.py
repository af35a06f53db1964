"""The emulator's one webhook endpoint, its events and their deliveries, as Polar keeps them (docs/polar.md §5).

- An event is created per emitted webhook for the endpoint if the endpoint subscribes to its type. While the
  endpoint is disabled the event is recorded as `skipped` and never sent.
- Every HTTP attempt is a delivery row (`succeeded`, `http_code`, `response`: the body's first 2048 characters, or the
  error when the URL was unreachable).
- An event fails for good after `webhook_max_attempts` deliveries in all (Polar counts every delivery of the event,
  redeliveries included, so redelivering an exhausted event gets one attempt).
- Auto-disable (Polar's `on_event_failed`): when an event fails for good and the endpoint's N most recent *completed*
  events (by creation, pending ones ignored) all failed, the endpoint is disabled and its pending events (not yet
  completed, retrying or not) are marked skipped; they stop being retried. A success among the N resets the streak.
  Re-enabling sends nothing again: a skipped or failed event goes out only when redelivered.

Polar's current server creates no event at all for a disabled endpoint; recording it as skipped (visible only in
the admin API) changes nothing a caller of Polar's API can see, and lets tests count what was lost.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from .spec import webhook_event_types

API_VERSION = "2026-10"
# Polar's LOCALHOST_HOSTS (server/polar/webhook/schemas.py); urlparse drops the brackets of [::1].
LOCALHOST_HOSTS = {"localhost", "127.0.0.1", "0.0.0.0", "::1"}


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_local_url(url: str) -> bool:
    return (urlparse(url).hostname or "").lower() in LOCALHOST_HOSTS


@dataclass
class Delivery:
    """One HTTP attempt to deliver an event."""

    id: str
    created_at: str
    succeeded: bool
    http_code: int | None
    response: str | None


@dataclass
class WebhookEvent:
    id: str  # also the `webhook-id` header, on every attempt and redelivery
    type: str
    payload: str
    created_at: str = field(default_factory=now_iso)
    endpoint_id: str | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    succeeded: bool | None = None  # None: not completed (never attempted, or still retrying)
    skipped: bool = False
    modified_at: str | None = None

    @property
    def last_http_code(self) -> int | None:
        return self.deliveries[-1].http_code if self.deliveries else None

    def summary(self) -> dict[str, Any]:
        """The admin API's view (`/__emulator__/webhooks`): one line per attempt."""
        return {"id": self.id, "type": self.type, "created_at": self.created_at, "succeeded": self.succeeded,
                "skipped": self.skipped,
                "attempts": [{"at": d.created_at, "status": d.http_code,
                              "error": None if d.http_code is not None else d.response} for d in self.deliveries]}

    def to_polar(self) -> dict[str, Any]:
        """Polar's `WebhookEvent` schema (plus `api_version`, which polar-sdk 1.0.2 requires)."""
        return {"created_at": self.created_at, "modified_at": self.modified_at, "id": self.id,
                "last_http_code": self.last_http_code, "succeeded": self.succeeded, "skipped": self.skipped,
                "api_version": API_VERSION, "payload": self.payload, "type": self.type, "is_archived": False}


def delivery_to_polar(d: Delivery, event: WebhookEvent) -> dict[str, Any]:
    return {"created_at": d.created_at, "modified_at": None, "id": d.id, "succeeded": d.succeeded,
            "http_code": d.http_code, "response": d.response, "webhook_event": event.to_polar()}


@dataclass
class Endpoint:
    id: str
    url: str | None
    secret: str
    scheme: str  # standard | legacy
    organization_id: str
    enabled: bool = True
    name: str | None = None
    format: str = "raw"
    events: list[str] = field(default_factory=lambda: list(webhook_event_types()))
    created_at: str = field(default_factory=now_iso)
    modified_at: str | None = None
    disabled_at: str | None = None  # when auto-disable last fired (admin API only)

    def touch(self) -> None:
        self.modified_at = now_iso()

    def to_polar(self) -> dict[str, Any]:
        """Polar's `WebhookEndpoint` schema, plus the two fields polar-sdk 1.0.2 requires."""
        return {"created_at": self.created_at, "modified_at": self.modified_at, "id": self.id, "url": self.url,
                "name": self.name, "api_version": API_VERSION, "format": self.format, "secret": self.secret,
                "organization_id": self.organization_id, "events": list(self.events), "enabled": self.enabled,
                "uses_standard_webhook_signature": self.scheme == "standard"}


def new_delivery(http_code: int | None, response: str | None) -> Delivery:
    return Delivery(id=str(uuid.uuid4()), created_at=now_iso(), succeeded=http_code is not None
                    and 200 <= http_code < 300, http_code=http_code, response=response)


def failure_streak(endpoint: Endpoint, events: list[WebhookEvent]) -> int:
    """How many of the endpoint's most recent completed events (newest first) failed, up to the first success."""
    streak = 0
    for e in reversed(events):  # creation order, newest first
        if e.endpoint_id != endpoint.id or e.succeeded is None:
            continue
        if e.succeeded:
            break
        streak += 1
    return streak


def disable_if_failing(endpoint: Endpoint, events: list[WebhookEvent], threshold: int) -> list[WebhookEvent]:
    """Polar's rule, run when an event fails for good: disable the endpoint if its last `threshold` completed events
    all failed, and mark its pending events skipped. Returns the events it skipped."""
    if not endpoint.enabled or failure_streak(endpoint, events) < threshold:
        return []
    endpoint.enabled = False
    endpoint.touch()
    endpoint.disabled_at = endpoint.modified_at
    pending = [e for e in events if e.endpoint_id == endpoint.id and e.succeeded is None and not e.skipped]
    for e in pending:
        e.skipped = True
        e.modified_at = endpoint.modified_at
    return pending
