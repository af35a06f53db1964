"""Polar state that changes without a webhook: the drift reconciliation and backfill exist to find.

- `change_subscription`: what a dashboard edit, a support action or a lost event leaves behind: status, plan,
  pending cancellation, period, revocation. `modified_at` moves as Polar's would; nothing is sent.
- `seed`: many customers and subscriptions at once (a migration, or history from before our webhook endpoint
  existed), in a chosen mix of plans and statuses, plus customers that have no external id.
"""
from __future__ import annotations

import copy
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from .lifecycle import PERIOD, Lifecycle
from .query import parse_time
from .spec import subscription_statuses
from .state import iso, template


class ChangeError(ValueError):
    """The admin request cannot be applied (400, or 409 for `conflict`)."""

    def __init__(self, message: str, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict


CHANGES = ("status", "product_id", "cancel_at_period_end", "ends_at", "current_period_start", "current_period_end",
           "revoke")


def _time(value: Any, key: str) -> str | None:
    if value is None:
        return None
    try:
        return iso(parse_time(str(value)))
    except ValueError:
        raise ChangeError(f"{key} must be an ISO 8601 time or null") from None


def _revoke_grants(lifecycle: Lifecycle, sub: dict[str, Any], now: str) -> None:
    for g in lifecycle.store.grants.values():
        if g["subscription_id"] == sub["id"] and g["is_granted"]:
            g.update(is_granted=False, is_revoked=True, revoked_at=now, modified_at=now)


def change_subscription(lifecycle: Lifecycle, sub: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Apply `body` (keys of CHANGES) to `sub` in place, without a webhook; returns the subscription."""
    store = lifecycle.store
    unknown = sorted(set(body) - set(CHANGES))
    if unknown or not body:
        raise ChangeError(f"give one or more of {', '.join(CHANGES)}" + (f"; unknown: {unknown}" if unknown else ""))
    now_dt = store.clock.now()
    now = iso(now_dt)
    if "product_id" in body:
        product_id = body["product_id"]
        if not store.known_product(product_id):
            raise ChangeError(f"unknown product {product_id}")
        if product_id != sub["product_id"]:  # a plan change: product, price, amount and the credit grant follow
            product = store.product(product_id)
            sub.update(product_id=product_id, product=product, prices=copy.deepcopy(product.get("prices", [])),
                       amount=5000 if product_id == store.settings.team_product_id else 2000)
            _revoke_grants(lifecycle, sub, now)
            customer = store.customer_by_id(sub["customer_id"])
            if customer is not None:
                lifecycle.new_grant(sub, customer, now_dt)
    if "status" in body:
        status = body["status"]
        if status not in subscription_statuses():
            raise ChangeError(f"status must be one of {', '.join(subscription_statuses())}")
        sub["status"] = status
        if status in ("active", "trialing"):
            sub["ended_at"] = None
        if status == "past_due" and not sub.get("past_due_at"):
            sub["past_due_at"] = now
    if "cancel_at_period_end" in body:
        if not isinstance(body["cancel_at_period_end"], bool):
            raise ChangeError("cancel_at_period_end must be true or false")
        if body["cancel_at_period_end"]:
            sub.update(cancel_at_period_end=True, canceled_at=sub.get("canceled_at") or now,
                       ends_at=sub["current_period_end"])
        else:
            sub.update(cancel_at_period_end=False, canceled_at=None, ends_at=None)
    for key in ("current_period_start", "current_period_end"):
        if key in body:
            if body[key] is None:
                raise ChangeError(f"{key} cannot be null")
            sub[key] = _time(body[key], key)
    if "ends_at" in body:
        sub["ends_at"] = _time(body["ends_at"], "ends_at")
    if body.get("revoke"):  # Polar's immediate revocation: canceled and ended now, the grants revoked
        sub.update(status="canceled", ended_at=now, ends_at=now, canceled_at=sub.get("canceled_at") or now)
        _revoke_grants(lifecycle, sub, now)
    sub["modified_at"] = now
    return sub


SEED_KINDS = ("pro", "team", "trialing", "canceling", "past_due", "canceled", "unpaid", "incomplete")


def _plan_counts(count: int, mix: dict[str, Any]) -> list[str]:
    unknown = sorted(set(mix) - set(SEED_KINDS))
    if unknown:
        raise ChangeError(f"mix keys are {', '.join(SEED_KINDS)}; unknown: {unknown}")
    if not all(isinstance(v, int) and v >= 0 for v in mix.values()):
        raise ChangeError("mix values are counts (integers >= 0)")
    if sum(mix.values()) > count:
        raise ChangeError(f"the mix adds up to {sum(mix.values())}, more than count {count}")
    kinds = [k for k in SEED_KINDS for _ in range(mix.get(k, 0))]
    return kinds + ["pro"] * (count - len(kinds))  # the rest: Pro, active


def _shape(sub: dict[str, Any], kind: str, started: datetime, now: datetime) -> None:
    """Turn a fresh active subscription into one of SEED_KINDS, with times consistent with its story."""
    period_start = now - timedelta(days=10)
    sub.update(current_period_start=iso(period_start), current_period_end=iso(period_start + PERIOD))
    if kind == "trialing":
        sub.update(status="trialing", trial_start=iso(period_start), trial_end=iso(period_start + timedelta(days=14)))
    elif kind == "canceling":
        sub.update(cancel_at_period_end=True, canceled_at=iso(now - timedelta(days=2)),
                   ends_at=sub["current_period_end"])
    elif kind == "past_due":
        sub.update(status="past_due", past_due_at=iso(now - timedelta(days=1)))
    elif kind in ("canceled", "unpaid"):
        ended = started + PERIOD
        sub.update(status=kind, canceled_at=iso(ended - timedelta(days=3)), ends_at=iso(ended), ended_at=iso(ended),
                   current_period_start=iso(started), current_period_end=iso(ended))
    elif kind == "incomplete":
        sub.update(status="incomplete", started_at=None)


def seed(lifecycle: Lifecycle, count: int, prefix: str, mix: dict[str, Any], without_external_id: int) -> dict:
    """`count` customers `<prefix>00001`… each with one subscription of the mix's kinds, then `without_external_id`
    customers with no external id (each with an active Pro subscription). No webhook is sent."""
    store = lifecycle.store
    if not isinstance(count, int) or count < 0 or not isinstance(without_external_id, int) or without_external_id < 0:
        raise ChangeError("count and without_external_id are integers >= 0")
    kinds = _plan_counts(count, mix)
    ids = [f"{prefix}{i:05d}" for i in range(1, count + 1)]
    taken = [e for e in ids if e in store.customers]
    if taken:
        raise ChangeError(f"{len(taken)} external ids already exist (first: {taken[0]}); use another prefix",
                          conflict=True)
    now = store.clock.now()
    total = count + without_external_id
    base = now - timedelta(days=70)  # history: started 70 to 40 days ago, so a canceled one has ended before now
    out = []
    for i, kind in enumerate(kinds + ["pro"] * without_external_id):
        started = base + timedelta(seconds=i * 30 * 86400 // max(1, total))
        external_id = ids[i] if i < count else None
        name = external_id or f"{prefix}anonymous-{i - count + 1:05d}"
        c = template("customer.created")["data"]
        c.update(id=str(uuid.uuid4()), external_id=external_id, created_at=iso(started), modified_at=iso(started),
                 email=f"{name}@example.com", name=name, organization_id=store.settings.organization_id,
                 metadata={})
        if external_id is None:
            store.anonymous_customers[c["id"]] = c
        else:
            store.customers[external_id] = c
        product = store.settings.team_product_id if kind == "team" else store.settings.pro_product_id
        sub = lifecycle.new_subscription(c, product, started)
        _shape(sub, kind, started, now)
        if kind not in ("canceled", "unpaid", "incomplete"):
            lifecycle.new_grant(sub, c, started)
        out.append({"external_id": external_id, "customer_id": c["id"], "subscription_id": sub["id"], "kind": kind,
                    "status": sub["status"], "product_id": product})
    return {"created": dict(Counter(kinds)), "without_external_id": without_external_id, "customers": out}
