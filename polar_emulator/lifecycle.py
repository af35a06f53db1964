"""Simulated customer lifecycles: each step changes the emulator's objects and emits the webhooks Polar emits for it,
in Polar's documented order (docs/polar.md §2), with payloads shaped like `payloads/`."""
from __future__ import annotations

import copy
import uuid
from datetime import datetime, timedelta
from typing import Any

from .delivery import Deliverer
from .state import Store, iso, template

PERIOD = timedelta(days=30)


class LifecycleError(LookupError):
    pass


class Lifecycle:
    def __init__(self, store: Store, deliverer: Deliverer) -> None:
        self.store = store
        self.deliverer = deliverer

    def _emit(self, events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        sent = self.deliverer.emit([(t, copy.deepcopy(d)) for t, d in events], self.store.clock.now())
        return [{"webhook_id": e.id, "type": e.type} for e in sent]

    def _touch(self, obj: dict[str, Any]) -> None:
        obj["modified_at"] = iso(self.store.clock.now())

    def subscription_of(self, external_customer_id: str) -> dict[str, Any]:
        c = self.store.customers.get(external_customer_id)
        subs = [s for s in self.store.subscriptions.values() if c and s["customer_id"] == c["id"]]
        if not subs:
            raise LifecycleError(f"{external_customer_id} has no subscription")
        return max(subs, key=lambda s: s["created_at"])

    def _order(self, sub: dict[str, Any], reason: str) -> dict[str, Any]:
        o = template("order.created")["data"]
        now = iso(self.store.clock.now())
        o.update(id=str(uuid.uuid4()), created_at=now, modified_at=now, status="pending", paid=False,
                 billing_reason=reason, customer_id=sub["customer_id"], product_id=sub["product_id"],
                 subscription_id=sub["id"], customer=copy.deepcopy(sub["customer"]),
                 product=copy.deepcopy(sub["product"]), metadata=copy.deepcopy(sub.get("metadata") or {}))
        for key in ("subtotal_amount", "net_amount", "total_amount", "due_amount"):
            o[key] = sub["amount"]
        o["subscription"] = {k: copy.deepcopy(sub.get(k, v)) for k, v in o["subscription"].items()}
        self.store.orders[o["id"]] = o
        return o

    def _pay(self, o: dict[str, Any]) -> dict[str, Any]:
        o.update(status="paid", paid=True)
        self._touch(o)
        return o

    def purchase(self, external_customer_id: str, product_id: str, checkout_id: str | None = None) -> list[dict]:
        s = self.store
        if not s.known_product(product_id):
            raise LifecycleError(f"unknown product {product_id}")
        events: list[tuple[str, dict[str, Any]]] = []
        new_customer = external_customer_id not in s.customers
        checkout = s.checkouts.get(checkout_id) if checkout_id else None
        email = checkout.get("customer_email") if checkout else None
        c = s.customer(external_customer_id, email)
        now = s.clock.now()
        sub = self.new_subscription(c, product_id, now, checkout_id=checkout_id,
                                    metadata=copy.deepcopy(checkout["metadata"]) if checkout else {})
        if checkout:
            checkout.update(status="succeeded", customer_id=c["id"], subscription_id=sub["id"])
            self._touch(checkout)
            events.append(("checkout.updated", checkout))
        if new_customer:
            events.append(("customer.created", c))
        events += [("subscription.created", sub), ("subscription.active", sub)]
        order = self._order(sub, "subscription_create")
        events.append(("order.created", copy.deepcopy(order)))
        events.append(("order.paid", self._pay(order)))
        g = self.new_grant(sub, c, now)
        if g is not None:
            events.append(("benefit_grant.created", g))
        return self._emit(events)

    def new_subscription(self, c: dict[str, Any], product_id: str, now: datetime, *, checkout_id: str | None = None,
                         metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """An active subscription of customer `c` to `product_id` started `now`, stored (no webhook)."""
        s = self.store
        sub = template("subscription.created")["data"]
        amount = 5000 if product_id == s.settings.team_product_id else 2000
        sub.update(id=str(uuid.uuid4()), created_at=iso(now), modified_at=iso(now), status="active",
                   customer_id=c["id"], product_id=product_id, product=s.product(product_id),
                   customer=s.customer_ref(c), amount=amount, current_period_start=iso(now),
                   current_period_end=iso(now + PERIOD), started_at=iso(now), cancel_at_period_end=False,
                   canceled_at=None, ends_at=None, ended_at=None, checkout_id=checkout_id, metadata=metadata or {})
        s.subscriptions[sub["id"]] = sub
        return sub

    def new_grant(self, sub: dict[str, Any], c: dict[str, Any], now: datetime) -> dict[str, Any] | None:
        """Pro's meter-credit grant for `sub`, stored (no webhook); None for a product without one."""
        s = self.store
        if sub["product_id"] != s.settings.pro_product_id or not s.settings.pro_meter_credits:
            return None
        g = template("benefit_grant.created")["data"]
        g.update(id=str(uuid.uuid4()), created_at=iso(now), modified_at=iso(now), granted_at=iso(now),
                 is_granted=True, is_revoked=False, revoked_at=None, customer_id=c["id"],
                 subscription_id=sub["id"], customer=s.customer_ref(c))
        g["benefit"]["properties"].update(units=s.settings.pro_meter_credits, meter_id=s.settings.tokens_meter_id)
        s.grants[g["id"]] = g
        return g

    def _grants(self, sub: dict[str, Any]) -> list[dict[str, Any]]:
        return [g for g in self.store.grants.values() if g["subscription_id"] == sub["id"]]

    def cancel(self, external_customer_id: str) -> list[dict]:
        sub = self.subscription_of(external_customer_id)
        sub.update(cancel_at_period_end=True, canceled_at=iso(self.store.clock.now()), ends_at=sub["current_period_end"])
        self._touch(sub)
        return self._emit([("subscription.updated", sub), ("subscription.canceled", sub)])

    def uncancel(self, external_customer_id: str) -> list[dict]:
        sub = self.subscription_of(external_customer_id)
        sub.update(cancel_at_period_end=False, canceled_at=None, ends_at=None)
        self._touch(sub)
        return self._emit([("subscription.updated", sub), ("subscription.uncanceled", sub)])

    def revoke(self, external_customer_id: str) -> list[dict]:
        sub = self.subscription_of(external_customer_id)
        now = iso(self.store.clock.now())
        sub.update(status="canceled", ended_at=now, ends_at=now, canceled_at=sub.get("canceled_at") or now)
        self._touch(sub)
        events: list[tuple[str, dict[str, Any]]] = [("subscription.updated", sub), ("subscription.revoked", sub)]
        for g in self._grants(sub):
            g.update(is_granted=False, is_revoked=True, revoked_at=now)
            self._touch(g)
            events.append(("benefit_grant.revoked", g))
        return self._emit(events)

    def renew(self, external_customer_id: str) -> list[dict]:
        sub = self.subscription_of(external_customer_id)
        start = self.store.clock.now()
        sub.update(status="active", current_period_start=iso(start), current_period_end=iso(start + PERIOD))
        self._touch(sub)
        events: list[tuple[str, dict[str, Any]]] = [("subscription.cycled", sub), ("subscription.updated", sub)]
        order = self._order(sub, "subscription_cycle")
        events.append(("order.created", copy.deepcopy(order)))
        events.append(("order.paid", self._pay(order)))
        for g in self._grants(sub):
            self._touch(g)
            events.append(("benefit_grant.cycled", g))
        return self._emit(events)

    def past_due(self, external_customer_id: str) -> list[dict]:
        sub = self.subscription_of(external_customer_id)
        sub.update(status="past_due", past_due_at=iso(self.store.clock.now()))
        self._touch(sub)
        return self._emit([("subscription.updated", sub), ("subscription.past_due", sub)])

    def refund(self, external_customer_id: str) -> list[dict]:
        sub = self.subscription_of(external_customer_id)
        orders = [o for o in self.store.orders.values() if o["subscription_id"] == sub["id"] and o["paid"]]
        if not orders:
            raise LifecycleError(f"{external_customer_id} has no paid order")
        o = max(orders, key=lambda o: o["created_at"])
        o.update(status="refunded", refunded_amount=o["total_amount"])
        self._touch(o)
        return self._emit([("order.refunded", o)])

    ACTIONS = ("purchase", "cancel", "uncancel", "revoke", "renew", "past_due", "refund")
