"""A Polar webhook → billing's rows, in one transaction: log it, apply it monotonically, note plan changes.

One function per event family; none holds SQL (repository.py does). `process_webhook` is what the NATS handler and
the operator's replay command call.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import ValidationError

from shared import failpoints, topology
from shared.contracts import SubscriptionChanged
from shared.plans import PlanCatalog
from shared.retry import PermanentError

from . import repository as repo
from .polar_models import (BenefitGrant, Checkout, Customer, CustomerState, Envelope, Order, StateSubscription,
                           Subscription, redact)

log = logging.getLogger(__name__)

SUBSCRIPTION_CHANGED = f"{topology.BILLING_EVENT_PREFIX}.subscription.changed"


@dataclass
class Outcome:
    status: str  # applied | skipped | duplicate
    changes: list[SubscriptionChanged] = field(default_factory=list)
    note: str | None = None


@dataclass
class Ctx:
    conn: asyncpg.Connection
    catalog: PlanCatalog
    webhook_id: str
    env: Envelope
    # user id -> (plan, status) before this event touched them
    before: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    skip_reason: str | None = None

    async def touch(self, user_id: str | None) -> None:
        """Lock the user and remember their effective plan before the change."""
        if user_id and user_id not in self.before:
            await repo.lock_user(self.conn, user_id)
            self.before[user_id] = _plan_status(await repo.effective_plan(self.conn, user_id))

    def stamp(self, obj: Any) -> dict[str, datetime]:
        return {"version": obj.version(self.env.timestamp), "event_ts": self.env.timestamp}


def _plan_status(row: asyncpg.Record | None) -> tuple[str, str | None]:
    return (row["plan"], row["status"]) if row else ("free", None)


def _parse(model: type, data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PermanentError(f"{model.__name__} payload: {exc.errors(include_url=False, include_input=False)}") from exc


def _subscription_row(ctx: Ctx, s: StateSubscription, customer_id: str, user_id: str | None,
                      version: dict[str, datetime]) -> dict[str, Any]:
    plan = ctx.catalog.for_product(s.product_id)
    if plan is None:
        log.warning("subscription.unknown_product", extra={"subscription_id": s.id, "product_id": s.product_id,
                                                            "webhook_id": ctx.webhook_id})
    return {
        "id": s.id, "customer_id": customer_id, "user_id": user_id, "product_id": s.product_id,
        "plan": plan.name.value if plan else None, "unknown_product": plan is None, "status": s.status,
        "amount_cents": s.amount, "currency": s.currency, "recurring_interval": s.recurring_interval,
        "current_period_start": s.current_period_start, "current_period_end": s.current_period_end,
        "cancel_at_period_end": s.cancel_at_period_end, "canceled_at": s.canceled_at, "started_at": s.started_at,
        "ends_at": s.ends_at, "ended_at": getattr(s, "ended_at", None), "checkout_id": getattr(s, "checkout_id", None),
        **version,
    }


async def _customer_ref(ctx: Ctx, ref: Any, customer_id: str) -> str | None:
    """The user behind a nested customer; records the link if we had not seen the customer yet."""
    user_id = ref.user_id if ref else None
    if user_id:
        await ctx.touch(user_id)
        # Lowest possible version: fills a gap, never overwrites what a customer.* event wrote.
        await repo.upsert_customer(ctx.conn, {"id": customer_id, "user_id": user_id, "deleted_at": None,
                                              "version": datetime.min.replace(tzinfo=ctx.env.timestamp.tzinfo),
                                              "event_ts": datetime.min.replace(tzinfo=ctx.env.timestamp.tzinfo)})
        return user_id
    return await repo.user_of_customer(ctx.conn, customer_id)


async def on_checkout(ctx: Ctx) -> None:
    c: Checkout = _parse(Checkout, ctx.env.data)
    await ctx.touch(c.external_customer_id)
    await repo.upsert_checkout(ctx.conn, {
        "id": c.id, "user_id": c.external_customer_id, "product_id": c.product_id, "status": c.status,
        "subscription_id": c.subscription_id, **ctx.stamp(c)})


async def on_customer(ctx: Ctx) -> None:
    c: Customer = _parse(Customer, ctx.env.data)
    deleted_at = c.deleted_at or (ctx.env.timestamp if ctx.env.type == "customer.deleted" else None)
    await ctx.touch(c.user_id)
    await repo.upsert_customer(ctx.conn, {"id": c.id, "user_id": c.user_id, "deleted_at": deleted_at,
                                          **ctx.stamp(c)})


async def on_subscription(ctx: Ctx) -> None:
    s: Subscription = _parse(Subscription, ctx.env.data)
    user_id = await _customer_ref(ctx, s.customer, s.customer_id)
    await ctx.touch(user_id)
    await repo.upsert_subscription(ctx.conn, _subscription_row(ctx, s, s.customer_id, user_id, ctx.stamp(s)))


async def on_order(ctx: Ctx) -> None:
    o: Order = _parse(Order, ctx.env.data)
    user_id = await _customer_ref(ctx, o.customer, o.customer_id)
    await repo.upsert_order(ctx.conn, {
        "id": o.id, "customer_id": o.customer_id, "user_id": user_id, "subscription_id": o.subscription_id,
        "product_id": o.product_id, "status": o.status, "billing_reason": o.billing_reason, "paid": o.paid,
        "total_amount_cents": o.total_amount, "refunded_amount_cents": o.refunded_amount, "currency": o.currency,
        **ctx.stamp(o)})


async def on_benefit_grant(ctx: Ctx) -> None:
    g: BenefitGrant = _parse(BenefitGrant, ctx.env.data)
    if g.benefit.type != "meter_credit":
        ctx.skip_reason = f"benefit type {g.benefit.type} carries no meter credit"
        return
    user_id = await _customer_ref(ctx, g.customer, g.customer_id)
    props = g.benefit.properties
    revoked_at = g.revoked_at or (ctx.env.timestamp if g.is_revoked else None)
    await repo.upsert_meter_credit(ctx.conn, {
        "grant_id": g.id, "customer_id": g.customer_id, "user_id": user_id, "subscription_id": g.subscription_id,
        "benefit_id": g.benefit_id, "meter_id": props.get("meter_id"), "units": int(props.get("units") or 0),
        "rollover": bool(props.get("rollover", False)), "granted_at": g.granted_at, "revoked_at": revoked_at,
        **ctx.stamp(g)})


async def on_customer_state(ctx: Ctx) -> None:
    """A full snapshot: the customer, every active subscription, and the end of any we hold active that it omits."""
    st: CustomerState = _parse(CustomerState, ctx.env.data)
    await ctx.touch(st.user_id)
    await repo.upsert_customer(ctx.conn, {"id": st.id, "user_id": st.user_id, "deleted_at": st.deleted_at,
                                          **ctx.stamp(st)})
    user_id = st.user_id or await repo.user_of_customer(ctx.conn, st.id)
    await ctx.touch(user_id)
    for s in st.active_subscriptions:
        await repo.upsert_subscription(ctx.conn, _subscription_row(ctx, s, st.id, user_id, ctx.stamp(s)))
    if user_id:
        await repo.end_missing_subscriptions(ctx.conn, user_id, st.id, [s.id for s in st.active_subscriptions],
                                             ctx.env.timestamp, ctx.env.timestamp)


HANDLERS: dict[str, Callable[[Ctx], Awaitable[None]]] = {
    **{f"checkout.{e}": on_checkout for e in ("created", "updated")},
    **{f"customer.{e}": on_customer for e in ("created", "updated", "deleted")},
    **{f"subscription.{e}": on_subscription
       for e in ("created", "updated", "active", "canceled", "uncanceled", "revoked", "past_due", "cycled")},
    **{f"order.{e}": on_order for e in ("created", "paid", "refunded", "updated")},
    **{f"benefit_grant.{e}": on_benefit_grant for e in ("created", "cycled", "updated", "revoked")},
    "customer.state_changed": on_customer_state,
}


def parse_envelope(body: bytes | str | dict[str, Any]) -> tuple[dict[str, Any], Envelope]:
    try:
        raw = body if isinstance(body, dict) else json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PermanentError("body is not JSON") from exc
    if not isinstance(raw, dict):
        raise PermanentError("body is not a JSON object")
    try:
        return raw, Envelope.model_validate(raw)
    except ValidationError as exc:
        raise PermanentError(f"envelope: {exc.errors(include_url=False, include_input=False)}") from exc


async def process_webhook(conn: asyncpg.Connection, catalog: PlanCatalog, webhook_id: str,
                          body: bytes | str | dict[str, Any], *, replay: bool = False) -> Outcome:
    """Log + apply in one transaction. A webhook already applied is a no-op (`duplicate`)."""
    raw, env = parse_envelope(body)
    async with conn.transaction():
        if not await repo.claim_webhook(conn, webhook_id, env.type, env.timestamp, redact(raw), replay=replay):
            return Outcome("duplicate")
        handler = HANDLERS.get(env.type)
        if handler is None:
            await repo.finish_webhook(conn, webhook_id, "skipped", f"unhandled event type {env.type}")
            return Outcome("skipped", note=f"unhandled event type {env.type}")
        ctx = Ctx(conn, catalog, webhook_id, env)
        await handler(ctx)
        status = "skipped" if ctx.skip_reason else "applied"
        await repo.finish_webhook(conn, webhook_id, status, ctx.skip_reason)
        changes = []
        for user_id, (old_plan, old_status) in ctx.before.items():
            row = await repo.effective_plan(conn, user_id)
            new_plan, new_status = _plan_status(row)
            if (new_plan, new_status) != (old_plan, old_status):
                changes.append(SubscriptionChanged(
                    user_id=user_id, old_plan=old_plan, new_plan=new_plan, old_status=old_status, status=new_status,
                    subscription_id=row["id"] if row else None,
                    current_period_end=row["current_period_end"] if row else None,
                    cancel_at_period_end=bool(row["cancel_at_period_end"]) if row else False,
                    webhook_id=webhook_id, occurred_at=env.timestamp))
        for change in changes:
            await repo.add_outbox(conn, SUBSCRIPTION_CHANGED, f"{webhook_id}:{change.user_id}",
                                  change.model_dump(mode="json"))
        failpoints.hit("billing.before_commit", webhook_id)
        return Outcome(status, changes, ctx.skip_reason)
