"""Webhook delivery the way Polar does it (docs/polar.md §3–§5), to the emulator's one endpoint (webhook_endpoints).

Each event's payload is serialized once and re-sent unchanged; `webhook-id` is stable across retries and
redeliveries, `webhook-timestamp` is the attempt's. Non-2xx, redirects and timeouts are failures, retried up to
`webhook_max_attempts` deliveries in all with Polar's backoff (after failed delivery n: base·2^n s jittered 50–100 %,
capped at 600·base, i.e. 2–4 s … 20 min for Polar's base of 2 s; the base is compressible for tests). An event that
fails for good may disable the endpoint (webhook_endpoints.disable_if_failing).
Modes (a test tool, not Polar): each event sent 1–N times, in shuffled order, concurrently.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from .config import EmulatorSettings
from .webhook_endpoints import API_VERSION, Endpoint, WebhookEvent, disable_if_failing, new_delivery

log = logging.getLogger(__name__)

__all__ = ["Deliverer", "Mode", "WebhookEvent"]


@dataclass
class Mode:
    max_copies: int = 1  # each event sent 1..max_copies times
    shuffle: bool = False
    concurrent: bool = False


class Deliverer:
    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.endpoint = Endpoint(id=settings.webhook_endpoint_id, url=settings.webhook_url,
                                 secret=settings.webhook_secret, scheme=settings.webhook_scheme,
                                 organization_id=settings.organization_id)
        self.mode = Mode()
        self.events: list[WebhookEvent] = []
        self._tasks: set[asyncio.Task] = set()
        self._client = httpx.AsyncClient(timeout=settings.webhook_timeout, follow_redirects=False)

    # The admin API's delivery config predates the endpoint object: these name its fields.
    @property
    def url(self) -> str | None:
        return self.endpoint.url

    @url.setter
    def url(self, value: str | None) -> None:
        self.endpoint.url = value

    @property
    def secret(self) -> str:
        return self.endpoint.secret

    @secret.setter
    def secret(self, value: str) -> None:
        self.endpoint.secret = value

    @property
    def scheme(self) -> str:
        return self.endpoint.scheme

    @scheme.setter
    def scheme(self, value: str) -> None:
        self.endpoint.scheme = value

    def key(self) -> Webhook:
        # legacy: HMAC key = the secret's UTF-8 bytes, prefix included; standard: base64 after `whsec_`.
        return Webhook(self.secret.encode()) if self.scheme == "legacy" else Webhook(self.secret)

    def signed_headers(self, event: WebhookEvent) -> dict[str, str]:
        now = datetime.now(UTC)
        return {
            "user-agent": "polar.sh webhooks",
            "content-type": "application/json",
            "webhook-id": event.id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.key().sign(event.id, now, event.payload),
            "webhook-api-version": API_VERSION,
        }

    def event(self, event_id: str) -> WebhookEvent | None:
        return next((e for e in self.events if e.id == event_id), None)

    def emit(self, events: list[tuple[str, dict[str, Any]]], timestamp: datetime) -> list[WebhookEvent]:
        """Record one lifecycle step's events (type, data) for the endpoint and send them, in Polar's order unless
        the mode shuffles. Types the endpoint does not subscribe to make no event; a disabled endpoint's are skipped."""
        ep = self.endpoint
        stamp = timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        out = []
        for event_type, data in events:
            if event_type not in ep.events:
                continue
            envelope = {"type": event_type, "timestamp": stamp, "api_version": API_VERSION, "data": data}
            out.append(WebhookEvent(str(uuid.uuid4()), event_type, json.dumps(envelope, separators=(",", ":")),
                                    created_at=stamp, endpoint_id=ep.id, skipped=not ep.enabled))
        self.events.extend(out)
        to_send = [e for e in out if not e.skipped]
        if ep.url and to_send:
            self._spawn(self._send_all(to_send))
        return out

    def redeliver(self, event: WebhookEvent) -> None:
        """Polar's `POST /v1/webhooks/events/{id}/redeliver`: the same event (id, payload) again, signed afresh,
        through the normal attempt and backoff path."""
        self._spawn(self.deliver(event, redeliver=True))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_all(self, events: list[WebhookEvent]) -> None:
        sends = [e for e in events for _ in range(random.randint(1, max(1, self.mode.max_copies)))]
        if self.mode.shuffle:
            random.shuffle(sends)
        if self.mode.concurrent:
            await asyncio.gather(*(self.deliver(e) for e in sends))
        else:
            for e in sends:
                await self.deliver(e)

    def _sendable(self, event: WebhookEvent) -> bool:
        ep = self.endpoint
        if not ep.enabled:  # Polar's send task marks the event skipped when it finds the endpoint disabled
            event.skipped = True
            return False
        return ep.url is not None and not event.skipped  # skipped by an auto-disable: no more retries

    async def deliver(self, event: WebhookEvent, *, redeliver: bool = False) -> bool:
        if redeliver and self.endpoint.enabled:
            event.skipped = False
        while self._sendable(event):
            url = self.endpoint.url
            assert url is not None
            try:
                resp = await self._client.post(url, content=event.payload.encode(), headers=self.signed_headers(event))
                delivery = new_delivery(resp.status_code, resp.text[:2048] or None)
            except httpx.HTTPError as exc:
                delivery = new_delivery(None, str(exc) or type(exc).__name__)
            event.deliveries.append(delivery)
            event.modified_at = delivery.created_at
            if delivery.succeeded:
                event.succeeded = True
                return True
            n = len(event.deliveries)
            if n >= self.settings.webhook_max_attempts:
                if event.succeeded is not True:
                    event.succeeded = False
                log.warning("webhook.gave_up", extra={"webhook_id": event.id, "type": event.type})
                skipped = disable_if_failing(self.endpoint, self.events, self.settings.webhook_disable_after)
                if not self.endpoint.enabled:
                    log.warning("webhook.endpoint_disabled", extra={"skipped": len(skipped)})
                return False
            base = self.settings.webhook_backoff_base
            delay = min(base * 2 ** n, base * 600)
            await asyncio.sleep(random.uniform(delay / 2, delay))
        return False

    def reset(self) -> None:
        """A new organization's endpoint and no events; only the URL, secret and scheme stay."""
        self.events.clear()
        ep = self.endpoint
        self.endpoint = Endpoint(id=ep.id, url=ep.url, secret=ep.secret, scheme=ep.scheme,
                                 organization_id=ep.organization_id)

    async def drain(self, timeout: float = 30.0) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self._client.aclose()
