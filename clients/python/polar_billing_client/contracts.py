"""Message contracts between services and with the chat service. JSON on the wire; these models are the schema."""
from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator


class Contract(BaseModel):
    """A request: billing refuses a field it does not know, so a typo is an error and not a silent default."""

    model_config = ConfigDict(extra="forbid")


class Answer(BaseModel):
    """A reply or an event: read tolerantly, so a newer billing may add a field without breaking older clients."""

    model_config = ConfigDict(extra="ignore")


class SubscriptionChanged(Answer):
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


# --- billing.rpc.* (core NATS request/reply) ---------------------------------------------------------------------
class CheckRequest(Contract):
    user_id: str = Field(min_length=1, max_length=256)
    model: str | None = Field(None, max_length=200)
    thread_id: str | None = Field(None, max_length=256)
    custom_key: bool = False
    estimated_tokens: int | None = Field(None, ge=0)


class ReserveRequest(CheckRequest):
    estimated_tokens: int = Field(ge=0)
    ttl_seconds: int = Field(300, ge=1, le=3600)


class ReleaseRequest(Contract):
    reservation_id: str = Field(min_length=1, max_length=128)


class StatusRequest(Contract):
    user_id: str = Field(min_length=1, max_length=256)


class CheckoutRequest(Contract):
    user_id: str = Field(min_length=1, max_length=256)
    plan: str = Field(min_length=1, max_length=32)
    success_url: str | None = Field(None, max_length=2000)
    return_url: str | None = Field(None, max_length=2000)


class PortalRequest(Contract):
    user_id: str = Field(min_length=1, max_length=256)
    return_url: str | None = Field(None, max_length=2000)


MAX_USAGE_DAYS = 400


class UsageQuery(Contract):
    """`billing.rpc.usage`: where a user's tokens went. Days are UTC; `from` is included, `to` is not; both default
    to the days of the current billing period."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    user_id: str = Field(min_length=1, max_length=256)
    from_: date | None = Field(None, alias="from")
    to: date | None = None
    group_by: list[Literal["day", "model", "thread"]] = Field(default_factory=list, max_length=2)
    limit: int | None = Field(None, ge=1, le=100)  # top N models / threads by tokens; the rest as "other"

    @model_validator(mode="after")
    def _range(self) -> UsageQuery:
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by: each of day, model, thread at most once")
        if self.from_ is not None and self.to is not None:
            if self.from_ >= self.to:
                raise ValueError("from: must be before to")
            if (self.to - self.from_).days > MAX_USAGE_DAYS:
                raise ValueError(f"to: a range is at most {MAX_USAGE_DAYS} days")
        return self


class UsageSums(Answer):
    events: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    billable_tokens: int
    cost_usd: float | None  # of the priced events; None when none of them has a known price
    unpriced_events: int  # events of a model without a price in the catalog


class UsageRow(UsageSums):
    day: date | None = None
    model: str | None = None  # "other": the models past the query's limit
    thread_id: str | None = None  # "other": the threads past the query's limit


class UsageReport(Answer):
    from_: date = Field(alias="from")
    to: date
    currency: str = "usd"
    totals: UsageSums
    rows: list[UsageRow]

    model_config = ConfigDict(extra="ignore", populate_by_name=True, serialize_by_alias=True)


class LimitState(Answer):
    used: int
    limit: int | None  # None = unlimited
    resets_at: datetime | None


class Degraded(Answer):
    """Set by the client, never by billing: the decision was made without billing's answer."""

    policy: str  # allow | deny (the fallback) | last_known (the user's last answer, reused)
    age_seconds: float | None = None  # last_known: how old the reused answer is


class CheckReply(Answer):
    allowed: bool
    plan: str
    reason: str | None  # tokens_per_month | threads_per_month | messages_per_day | model_not_in_plan |
    #                     custom_key_not_in_plan | subscription_inactive | unavailable (degraded deny)
    resets_at: datetime | None
    limits: dict[str, LimitState]
    overage: bool
    # Only the client sets it, on a decision made without billing; never on the wire.
    degraded: Degraded | None = Field(default=None, exclude=True)


class ReserveReply(CheckReply):
    reservation_id: str | None = None


class ReleaseReply(Answer):
    released: bool


class Credits(Answer):
    granted: int
    used: int
    balance: int


class StatusReply(Answer):
    plan: str
    status: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    limits: dict[str, LimitState]
    credits: Credits
    customer_id: str | None


class LinkReply(Answer):
    url: str
    expires_at: datetime
    checkout_id: str | None = None


class ErrorBody(Answer):
    code: str  # invalid_request | unknown_plan | plan_not_available | no_customer | polar_not_configured |
    #            polar_unavailable | polar_rate_limited | polar_rejected | not_found | internal
    message: str
    field: str | None = None
    retry_after: int | None = None


class ErrorReply(Answer):
    error: ErrorBody


class UsageThreshold(Answer):
    """`billing.event.usage.threshold`: usage crossed 80 % or 100 % of a limit in a period (once each)."""

    user_id: str
    limit: str
    percent: int
    used: int
    limit_value: int
    resets_at: datetime
