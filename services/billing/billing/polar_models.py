"""Our own tolerant models of Polar's webhook payloads (polar-sdk 1.0.2's are strict and cannot parse
`customer.state_changed` with an active subscription: docs/polar.md §12).

Unknown fields are ignored, `api_version` is optional, enum-like fields are plain text so a new value survives.
Only what billing stores is modelled.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from nats.aio.msg import Msg
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from shared import topology
from shared.retry import Invalid

MAX_USER_ID = 256  # polar_billing_client.contracts: user_id max_length


def _in_range(value: datetime) -> datetime:
    """A valid date-time whose UTC moment Python cannot hold (year 1 at +05:30, 9999-12-31 at -12:00) is clamped to
    the first or last moment it can: PostgreSQL stores every timestamptz in UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return (datetime.min if value.year < 5000 else datetime.max).replace(tzinfo=UTC)


Instant = Annotated[datetime, AfterValidator(_in_range)]
INT64 = (-(2**63), 2**63 - 1)


def int64(value: object) -> int:
    """A whole number as PostgreSQL's bigint can hold it: clamped to its range; anything not a number is 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0
    try:
        number = int(value)
    except (ValueError, OverflowError):
        return 0
    return min(max(number, INT64[0]), INT64[1])


Int64 = Annotated[int, AfterValidator(int64)]


def our_user_id(value: object) -> str | None:
    """An external id as our user id: text or a whole number, 1 to 256 characters; anything else maps to no user."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    if "\x00" in text or "\ufffd" in text:  # PostgreSQL cannot hold U+0000; our clients never send either
        return None
    return text if 0 < len(text) <= MAX_USER_ID else None


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Envelope(_Tolerant):
    type: str
    timestamp: Instant
    api_version: str | None = None
    data: dict[str, Any]


@dataclass(frozen=True)
class Webhook:
    """A stored webhook as billing takes it: its id (Polar's `webhook-id`), the body (redacted as it was parsed:
    nothing billing applies reads those fields), and the envelope."""

    id: str
    raw: dict[str, Any]
    envelope: Envelope
    may_hold_nul: bool = True  # False: the body's text has no escape that could spell U+0000

    @property
    def type(self) -> str:
        return self.envelope.type

    @property
    def had_nul(self) -> bool:
        return self.may_hold_nul and _has_nul(self.raw)

    def stored_payload(self) -> Any:
        """What the webhook log keeps: the redacted body, with any U+0000 replaced (PostgreSQL cannot hold it)."""
        return without_nul(self.raw) if self.may_hold_nul else self.raw

    @classmethod
    def parse(cls, webhook_id: str, body: bytes | str | dict[str, Any]) -> Webhook:
        """Raises `Invalid` (dead-lettered at once) when the body is not a webhook envelope."""
        if isinstance(body, bytes):
            try:
                body = body.decode()  # once, for json.loads and the U+0000 look below
            except UnicodeDecodeError:
                pass  # another encoding json.loads accepts: parsed from the bytes, looked at the slow way
        try:
            raw = redact(body) if isinstance(body, dict) else json.loads(body, object_hook=_redacted)
        except ValueError as exc:
            raise Invalid("body is not JSON") from exc
        if not isinstance(raw, dict):
            raise Invalid("body is not a JSON object")
        # JSON text can only write U+0000 as an escape: a body without one holds none.
        nul = not isinstance(body, str) or _NUL_ESCAPE in body
        try:
            # The rows get text without U+0000 (PostgreSQL cannot hold it); the log row says so (apply_webhook).
            return cls(webhook_id, raw, Envelope.model_validate(without_nul(raw) if nul else raw), nul)
        except ValidationError as exc:
            raise Invalid(f"envelope: {exc.errors(include_url=False, include_input=False)}") from exc

    @classmethod
    def from_msg(cls, msg: Msg) -> Webhook:
        headers = msg.headers or {}
        # `webhook-id` first: a dead letter put back on its subject carries a new message id, the same webhook id.
        return cls.parse(headers.get("webhook-id") or headers.get("Nats-Msg-Id") or "", msg.data)


def event_type_of(msg: Msg) -> str:
    """The event type a stored webhook's subject names (for a body that could not be parsed)."""
    return msg.subject.removeprefix(f"{topology.WEBHOOK_SUBJECT_PREFIX}.")


class _Versioned(_Tolerant):
    id: str
    created_at: Instant | None = None
    modified_at: Instant | None = None

    def version(self, envelope_ts: datetime) -> datetime:
        """What the row is built from: modified_at, else created_at, else the envelope timestamp."""
        return self.modified_at or self.created_at or envelope_ts


class CustomerRef(_Tolerant):
    id: str
    external_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    deleted_at: Instant | None = None

    @property
    def user_id(self) -> str | None:
        """Our user id: Polar's external_id. On soft delete Polar moves it into metadata["__external_id"]
        (docs/polar.md §7), where a value may be a number. An id longer than any our contracts accept (256) cannot
        be one of ours: the customer is kept, unmapped."""
        return our_user_id(self.external_id or self.metadata.get("__external_id"))


class Customer(_Versioned, CustomerRef):
    pass


class Checkout(_Versioned):
    status: str
    product_id: str | None = None
    external_customer_id: str | None = None
    customer_id: str | None = None
    subscription_id: str | None = None


class Order(_Versioned):
    status: str
    customer_id: str
    product_id: str | None = None
    subscription_id: str | None = None
    billing_reason: str | None = None
    paid: bool = False
    total_amount: Int64 = 0
    refunded_amount: Int64 = 0
    currency: str | None = None
    customer: CustomerRef | None = None


class Benefit(_Tolerant):
    id: str
    type: str
    properties: dict[str, Any] = Field(default_factory=dict)


class BenefitGrant(_Versioned):
    customer_id: str
    subscription_id: str | None = None
    benefit_id: str
    granted_at: Instant | None = None
    is_revoked: bool = False
    revoked_at: Instant | None = None
    benefit: Benefit
    customer: CustomerRef | None = None


class StateSubscription(_Versioned):
    """A subscription as customer state lists it; `Subscription` is the full webhook object."""

    status: str
    product_id: str
    amount: Int64 | None = None
    currency: str | None = None
    recurring_interval: str | None = None
    current_period_start: Instant | None = None
    current_period_end: Instant | None = None
    cancel_at_period_end: bool = False
    canceled_at: Instant | None = None
    started_at: Instant | None = None
    ends_at: Instant | None = None


class Subscription(StateSubscription):
    customer_id: str
    ended_at: Instant | None = None
    checkout_id: str | None = None
    customer: CustomerRef | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class CustomerState(Customer):
    active_subscriptions: list[StateSubscription] = Field(default_factory=list)


# Fields never stored: Polar's payloads carry them, our webhook log must not (CONVENTIONS: Database).
REDACTED_KEYS = frozenset({"billing_address", "tax_id", "customer_billing_address", "customer_tax_id",
                           "customer_ip_address", "customer_portal_url", "client_secret"})
_NUL_ESCAPE = "\\u0000"  # how JSON text writes U+0000 (a raw one is not valid JSON)


def redact(value: Any) -> Any:
    """What the webhook log may keep: no card, address or tax data, no portal URL, and no NUL character (which
    PostgreSQL's jsonb cannot hold; replaced by U+FFFD so the row, and the replay it allows, can still be written)."""
    if isinstance(value, dict):
        return {_text(k): ("[redacted]" if k in REDACTED_KEYS and v is not None else redact(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _text(value)
    return value


def _redacted(obj: dict[str, Any]) -> dict[str, Any]:
    """redact, one JSON object at a time as json.loads builds it (object_hook): no second walk or copy."""
    if not REDACTED_KEYS.isdisjoint(obj):
        for k in REDACTED_KEYS.intersection(obj):
            if obj[k] is not None:
                obj[k] = "[redacted]"
    return obj


def _has_nul(value: Any) -> bool:
    if isinstance(value, dict):
        return any("\x00" in k or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return isinstance(value, str) and "\x00" in value


def without_nul(value: Any) -> Any:
    """A copy of a payload with U+0000 replaced by U+FFFD in every key and string."""
    if isinstance(value, dict):
        return {_text(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return _text(value) if isinstance(value, str) else value


def _text(value: str) -> str:
    return value.replace("\x00", "\ufffd") if "\x00" in value else value
