"""Webhook delivery the way Polar does it (docs/polar.md §3–§5).

Each event's payload is serialized once and re-sent unchanged; `webhook-id` is stable across retries,
`webhook-timestamp` is the attempt's. Non-2xx, redirects and timeouts are failures, retried up to
`webhook_max_attempts` with Polar's backoff (base·2^n s, jittered 50–100 %; the base is compressible for tests).
Modes: each event sent 1–N times, in shuffled order, concurrently.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from .config import EmulatorSettings

log = logging.getLogger(__name__)


@dataclass
class Attempt:
    at: str
    status: int | None
    error: str | None = None


@dataclass
class WebhookEvent:
    id: str
    type: str
    payload: str
    attempts: list[Attempt] = field(default_factory=list)
    succeeded: bool | None = None

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "succeeded": self.succeeded,
                "attempts": [a.__dict__ for a in self.attempts]}


@dataclass
class Mode:
    max_copies: int = 1  # each event sent 1..max_copies times
    shuffle: bool = False
    concurrent: bool = False


class Deliverer:
    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.url = settings.webhook_url
        self.secret = settings.webhook_secret
        self.scheme = settings.webhook_scheme
        self.mode = Mode()
        self.events: list[WebhookEvent] = []
        self._tasks: set[asyncio.Task] = set()
        self._client = httpx.AsyncClient(timeout=settings.webhook_timeout, follow_redirects=False)

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
        }

    def emit(self, events: list[tuple[str, dict[str, Any]]], timestamp: datetime) -> list[WebhookEvent]:
        """Queue one lifecycle step's events (type, data) for delivery, in Polar's order unless the mode shuffles."""
        out = []
        for event_type, data in events:
            envelope = {"type": event_type, "timestamp": timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                        "api_version": "2026-10", "data": data}
            out.append(WebhookEvent(str(uuid.uuid4()), event_type, json.dumps(envelope, separators=(",", ":"))))
        self.events.extend(out)
        if self.url:
            task = asyncio.create_task(self._send_all(out))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return out

    async def _send_all(self, events: list[WebhookEvent]) -> None:
        sends = [e for e in events for _ in range(random.randint(1, max(1, self.mode.max_copies)))]
        if self.mode.shuffle:
            random.shuffle(sends)
        if self.mode.concurrent:
            await asyncio.gather(*(self.deliver(e) for e in sends))
        else:
            for e in sends:
                await self.deliver(e)

    async def deliver(self, event: WebhookEvent) -> bool:
        if self.url is None:
            return False
        for n in range(1, self.settings.webhook_max_attempts + 1):
            at = datetime.now(UTC).isoformat()
            try:
                resp = await self._client.post(self.url, content=event.payload.encode(),
                                               headers=self.signed_headers(event))
                event.attempts.append(Attempt(at, resp.status_code))
                if 200 <= resp.status_code < 300:
                    event.succeeded = True
                    return True
            except httpx.HTTPError as exc:
                event.attempts.append(Attempt(at, None, type(exc).__name__))
            if n < self.settings.webhook_max_attempts:
                delay = self.settings.webhook_backoff_base * 2 ** (n - 1)
                await asyncio.sleep(random.uniform(delay / 2, delay))
        event.succeeded = False
        log.warning("webhook.gave_up", extra={"webhook_id": event.id, "type": event.type})
        return False

    async def drain(self, timeout: float = 30.0) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self._client.aclose()
