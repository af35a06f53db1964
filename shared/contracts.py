"""Message contracts between services and with the chat service. JSON on the wire; these models are the schema."""
from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubscriptionChanged(Contract):
    """`billing.event.subscription.changed`: a user's effective plan or subscription status changed."""

    user_id: str
    old_plan: str
    new_plan: str
    old_status: str | None
    status: str | None  # None = no subscription (Free)
    subscription_id: str | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    webhook_id: str
    occurred_at: datetime


class UsageEvent(Contract):
    """One AI response's usage, published by the chat service on `usage.event.<user_id>` with
    `Nats-Msg-Id: <event_id>`. The event id is minted once per response and reused on every retry."""

    model_config = ConfigDict(extra="ignore")  # a newer client may add fields; they are not ours to refuse

    event_id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=256)
    thread_id: str = Field(min_length=1, max_length=256)
    model: str = Field(min_length=1, max_length=200)
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cached_input_tokens: int = Field(0, ge=0)
    custom_key: bool = False
    occurred_at: AwareDatetime
    reservation_id: str | None = Field(None, max_length=128)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def billable_tokens(self) -> int:
        """Tokens the user's plan pays for: none when the user's own API key paid the provider."""
        return 0 if self.custom_key else self.total_tokens
