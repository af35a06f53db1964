"""What the emulator remembers, and Polar objects built from the real payload shapes in `payloads/`.

Everything is in memory: an emulator restart is a new Polar organization.
"""
from __future__ import annotations

import copy
import json
import math
import secrets
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from . import scopes
from .config import EmulatorSettings

PAYLOADS = Path(__file__).parent / "payloads"


def template(event_type: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / f"{event_type}.json").read_text())


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Clock:
    """Strictly increasing timestamps: two changes never share a modified_at."""

    def __init__(self) -> None:
        self._last = datetime.min.replace(tzinfo=UTC)

    def now(self) -> datetime:
        t = datetime.now(UTC)
        if t <= self._last:
            t = self._last + timedelta(microseconds=1)
        self._last = t
        return t


@dataclass
class Fault:
    """The next `remaining` requests whose path starts with `path` fail this way."""

    path: str
    kind: str  # 500 | 502 | 429 | timeout | drop
    remaining: int
    retry_after: int = 1
    hang_seconds: float = 30.0


@dataclass
class IngestRule:
    """Reject (422) any ingested event whose metadata[key] == value, or whose external_id == value if key is None."""

    value: Any
    key: str | None = None


@dataclass
class Store:
    settings: EmulatorSettings
    clock: Clock = field(default_factory=Clock)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)  # by external id
    anonymous_customers: dict[str, dict[str, Any]] = field(default_factory=dict)  # no external id; by id
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    grants: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkouts: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    event_keys: set[str] = field(default_factory=set)
    batches: list[dict[str, Any]] = field(default_factory=list)
    requests: deque = field(default_factory=lambda: deque(maxlen=100_000))  # (time, method, path, status)
    faults: list[Fault] = field(default_factory=list)
    ingest_rules: list[IngestRule] = field(default_factory=list)
    latency: float = 0.0
    rate_windows: dict[str, tuple[float, int]] = field(default_factory=dict)  # token -> (window start, count)
    throttled: Counter[str] = field(default_factory=Counter)  # 429s the rate limit served, per path
    injected_429: Counter[str] = field(default_factory=Counter)  # 429s served by an injected fault, per path
    token_scopes: frozenset[str] | None = None  # None: every scope

    def __post_init__(self) -> None:
        self.token_scopes = scopes.parse(self.settings.token_scopes)

    # --- objects ------------------------------------------------------------------------------------------------
    def product(self, product_id: str) -> dict[str, Any]:
        p = copy.deepcopy(template("subscription.created")["data"]["product"])
        p["id"] = product_id
        if product_id == self.settings.team_product_id:
            p["name"] = "Team (monthly)"
            for price in p.get("prices", []):
                if price.get("amount_type") == "fixed":
                    price["price_amount"] = 5000
                price["product_id"] = product_id
        return p

    def known_product(self, product_id: str) -> bool:
        return product_id in (self.settings.pro_product_id, self.settings.team_product_id)

    def customer(self, external_id: str, email: str | None = None) -> dict[str, Any]:
        if external_id not in self.customers:
            c = template("customer.created")["data"]
            now = iso(self.clock.now())
            c.update(id=str(uuid.uuid4()), external_id=external_id, created_at=now, modified_at=now,
                     email=email or f"{external_id}@example.com", organization_id=self.settings.organization_id,
                     metadata={})
            self.customers[external_id] = c
        return self.customers[external_id]

    def customer_by_id(self, customer_id: str) -> dict[str, Any] | None:
        return next((c for c in self.all_customers() if c["id"] == customer_id), None)

    def all_customers(self) -> Iterator[dict[str, Any]]:
        yield from self.customers.values()
        yield from self.anonymous_customers.values()

    def customer_ref(self, c: dict[str, Any]) -> dict[str, Any]:
        ref = copy.deepcopy(template("subscription.created")["data"]["customer"])
        for key in ref:
            if key in c:
                ref[key] = copy.deepcopy(c[key])
        return ref

    def new_checkout(self, body: dict[str, Any]) -> dict[str, Any]:
        product_id = body["products"][0]
        ch = template("checkout.created")["data"]
        now = self.clock.now()
        client_secret = f"polar_c_{secrets.token_urlsafe(24)}"
        ch.update(
            id=str(uuid.uuid4()), created_at=iso(now), modified_at=None, status="open",
            client_secret=client_secret, url=f"{self.settings.frontend}/checkout/{client_secret}",
            expires_at=iso(now + timedelta(hours=24)), success_url=body.get("success_url") or ch["success_url"],
            return_url=body.get("return_url"), external_customer_id=body.get("external_customer_id"),
            metadata=body.get("metadata") or {}, customer_metadata=body.get("customer_metadata") or {},
            product_id=product_id, customer_id=None, customer_email=body.get("customer_email"),
            organization_id=self.settings.organization_id, subscription_id=None,
        )
        ch["product"] = self.product(product_id)
        ch["products"] = [self.product(p) for p in body["products"]]
        ch["prices"] = {p: self.product(p)["prices"] for p in body["products"]}
        ch["product_price_id"] = ch["product"]["prices"][0]["id"]
        ch["product_price"] = ch["product"]["prices"][0]
        self.checkouts[ch["id"]] = ch
        return ch

    def state(self, c: dict[str, Any]) -> dict[str, Any]:
        st = copy.deepcopy(c)
        subs = [s for s in self.subscriptions.values() if s["customer_id"] == c["id"]
                and s["status"] in ("active", "trialing")]
        base = template("customer.state_changed")["data"]
        sub_keys = base["active_subscriptions"][0].keys()
        st["active_subscriptions"] = [{k: copy.deepcopy(s.get(k)) for k in sub_keys if k in s} for s in subs]
        for s_out, s in zip(st["active_subscriptions"], subs):
            s_out["meters"] = []
            for k in sub_keys:
                s_out.setdefault(k, copy.deepcopy(base["active_subscriptions"][0][k]))
        st["granted_benefits"] = []
        st["active_meters"] = [self.customer_meter_state(c)]
        return st

    # --- meters -------------------------------------------------------------------------------------------------
    def consumed(self, external_id: str | None = None, since: datetime | None = None,
                 until: datetime | None = None) -> float:
        name, prop = self.settings.meter_event_name, self.settings.meter_property
        total = 0.0
        for e in self.events:
            if e["name"] != name or (external_id and e.get("external_customer_id") != external_id):
                continue
            ts = datetime.fromisoformat(e["timestamp"])
            if (since and ts < since) or (until and ts >= until):
                continue
            value = e.get("metadata", {}).get(prop)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total += value
        return total

    def credited(self, customer_id: str) -> int:
        return sum(g["benefit"]["properties"]["units"] for g in self.grants.values()
                   if g["customer_id"] == customer_id and g["is_granted"] and not g["is_revoked"])

    def meter(self) -> dict[str, Any]:
        """The one meter the emulator keeps: the sum of `meter_property` over events named `meter_event_name`."""
        s = self.settings
        return {"metadata": {}, "created_at": "2026-08-01T00:00:00Z", "modified_at": None, "id": s.tokens_meter_id,
                "name": "AI tokens", "unit": "token", "custom_label": None, "custom_multiplier": None,
                "filter": {"conjunction": "and",
                           "clauses": [{"property": "name", "operator": "eq", "value": s.meter_event_name}]},
                "aggregation": {"func": "sum", "property": s.meter_property},
                "organization_id": s.organization_id, "archived_at": None}

    def customer_meter(self, c: dict[str, Any]) -> dict[str, Any]:
        state = self.customer_meter_state(c)
        return {**state, "customer_id": c["id"], "customer": c, "meter": self.meter()}

    def customer_meter_state(self, c: dict[str, Any]) -> dict[str, Any]:
        consumed, credited = self.consumed(c["external_id"]), self.credited(c["id"])
        now = iso(self.clock.now())
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, c["id"])), "created_at": now, "modified_at": now,
                "meter_id": self.settings.tokens_meter_id, "consumed_units": consumed, "credited_units": credited,
                "balance": credited - consumed}

    # --- rate limit ---------------------------------------------------------------------------------------------
    def rate_limited(self, token: str) -> int | None:
        """Seconds to wait if this token has used up its window, else None (and the request counts).

        A fixed window, as Polar's asgi-ratelimit Redis backend keeps it: it opens at the token's first request and
        lasts `rate_limit_window_seconds`; once the allowance is spent every request is refused until it closes, and
        the Retry-After is the full window length (the backend answers the rule's period, not the time left)."""
        now = time.monotonic()
        length = self.settings.rate_limit_window_seconds
        start, count = self.rate_windows.get(token, (now, 0))
        if now - start >= length:
            start, count = now, 0
        if count >= self.settings.rate_limit_per_minute:
            return max(1, math.ceil(length))
        self.rate_windows[token] = (start, count + 1)
        return None

    def rate_window(self, token: str) -> dict[str, Any]:
        start, count = self.rate_windows.get(token, (0.0, 0))
        left = max(0.0, start + self.settings.rate_limit_window_seconds - time.monotonic())
        return {"used": count if left else 0, "resets_in": round(left, 3)}
