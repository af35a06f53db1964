"""The chat service's Python client: publish usage, ask billing (limits, status, links).

    client = await BillingClient.connect("nats://127.0.0.1:4222")
    await client.track_usage(user_id="usr_1", thread_id="t1", model="gpt-4o", input_tokens=812, output_tokens=96,
                             event_id=response_id)   # the same event_id on every retry of this response
"""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone

import nats
from nats.aio.client import Client
from nats.js.api import PubAck

from shared import topology
from shared.contracts import UsageEvent

# A user id becomes a subject token: no whitespace, wildcards or dots.
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_\-:@+=]+$")


def new_event_id() -> str:
    """One per AI response; keep it and pass it again when retrying the publish."""
    return f"ev_{uuid.uuid4().hex}"


class BillingClient:
    def __init__(self, nc: Client, *, publish_timeout: float = 5.0) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=publish_timeout)
        self.publish_timeout = publish_timeout

    @classmethod
    async def connect(cls, servers: str | list[str], **kwargs) -> "BillingClient":
        nc = await nats.connect(servers, name="billing-client", max_reconnect_attempts=-1, **kwargs)
        return cls(nc)

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
            custom_key=custom_key, occurred_at=occurred_at or datetime.now(timezone.utc),
            reservation_id=reservation_id,
        )
        return await self.publish_usage(event)

    async def publish_usage(self, event: UsageEvent) -> PubAck:
        return await self.js.publish(
            topology.usage_subject(event.user_id),
            event.model_dump_json().encode(),
            stream=topology.USAGE.name,
            headers={"Nats-Msg-Id": event.event_id, "content-type": "application/json"},
            timeout=self.publish_timeout,
        )
