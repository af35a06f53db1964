"""Message contracts between services and with the chat service. JSON on the wire; these models are the schema."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


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
