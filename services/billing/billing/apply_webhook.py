"""Where a Polar webhook becomes rows: in one transaction, log it, apply it monotonically, note plan changes.

One `apply_<family>` function per event family; none holds SQL (repository.py does). `apply_webhook` is what the
NATS handler (handlers.py) and the operator's replay command call.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from polar_billing_client.contracts import SubscriptionChanged
from polar_billing_client.subjects import SUBSCRIPTION_CHANGED
from pydantic import BaseModel, ValidationError

from dev import failpoints
from shared.plans import PlanCatalog
from shared.retry import PermanentError

from . import repository as repo
from .polar_models import (
    BenefitGrant,
    Checkout,
    Customer,
    CustomerState,
    Order,
    StateSubscription,
    Subscription,
    Webhook,
    int64,
    our_user_id,
)
from .repository import CheckoutRow, CustomerRow, MeterCreditRow, OrderRow, SubscriptionRow

log = logging.getLogger(__name__)

# Below any real version, in UTC: built in an event's own offset (+05:30) it would fall before year 1 once in UTC.
LOWEST = datetime.min.replace(tzinfo=UTC)


@dataclass
class Outcome:
    status: str  # applied | skipped | duplicate
    changes: list[SubscriptionChanged] = field(default_factory=list)
    note: str | None = None


@dataclass
class Ctx:
    conn: asyncpg.Connection
    catalog: PlanCatalog
    webhook: Webhook
    # user id -> (plan, status, cancel at period end) before this event touched them
    before: dict[str, PlanStatus] = field(default_factory=dict)
    skip_reason: str | None = None

    async def touch(self, user_id: str | None) -> None:
        """Lock the user and remember their effective plan before the change."""
        if user_id and user_id not in self.before:
            await repo.lock_user(self.conn, user_id)
            self.before[user_id] = await plan_of(self.conn, user_id)

    @property
    def webhook_id(self) -> str:
        return self.webhook.id

    @property
    def data(self) -> dict[str, Any]:
        return self.webhook.envelope.data

    @property
    def ts(self) -> datetime:
        return self.webhook.envelope.timestamp

    def stamp(self, obj: Any) -> dict[str, datetime]:
        return {"version": obj.version(self.ts), "event_ts": self.ts}


PlanStatus = tuple[str, str | None, bool]


def _plan_status(row: asyncpg.Record | None) -> PlanStatus:
    return (row["plan"], row["status"], bool(row["cancel_at_period_end"])) if row else ("free", None, False)


async def plan_of(conn: asyncpg.Connection, user_id: str) -> PlanStatus:
    """What a change event compares: the user's effective plan, its status, and whether it ends at period end."""
    return _plan_status(await repo.effective_plan(conn, user_id))


async def note_changes(conn: asyncpg.Connection, before: dict[str, PlanStatus], source_id: str,
                       occurred_at: datetime) -> list[SubscriptionChanged]:
    """Compare each touched user's plan with what it was, and put a change event in the outbox for each that moved,
    in the caller's transaction. `source_id`: the webhook id, or `reconcile:<repair id>`."""
    changes = []
    for user_id, (old_plan, old_status, old_cancel) in before.items():
        row = await repo.effective_plan(conn, user_id)
        new_plan, new_status, new_cancel = _plan_status(row)
        if (new_plan, new_status, new_cancel) != (old_plan, old_status, old_cancel):
            changes.append(SubscriptionChanged(
                user_id=user_id, old_plan=old_plan, new_plan=new_plan, old_status=old_status, status=new_status,
                subscription_id=row["id"] if row else None,
                current_period_end=row["current_period_end"] if row else None,
                cancel_at_period_end=new_cancel, webhook_id=source_id, occurred_at=occurred_at))
    for change in changes:
        await repo.add_outbox(conn, SUBSCRIPTION_CHANGED, f"{source_id}:{change.user_id}",
                              change.model_dump(mode="json"))
    return changes


def _parse(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PermanentError(f"{model.__name__} payload: {exc.errors(include_url=False, include_input=False)}") from exc


def _subscription_row(ctx: Ctx, s: StateSubscription, customer_id: str, user_id: str | None) -> SubscriptionRow:
    return subscription_row(ctx.catalog, s, customer_id, user_id, source=ctx.webhook_id, **ctx.stamp(s))


def subscription_row(catalog: PlanCatalog, s: StateSubscription, customer_id: str, user_id: str | None, *,
                     source: str, version: datetime, event_ts: datetime) -> SubscriptionRow:
    """A Polar subscription as our row, whether from a webhook or from reconciliation's listing."""
    plan = catalog.for_product(s.product_id)
    if plan is None:
        log.warning("subscription.unknown_product", extra={"subscription_id": s.id, "product_id": s.product_id,
                                                            "source": source})
    return SubscriptionRow(
        id=s.id, customer_id=customer_id, user_id=user_id, product_id=s.product_id,
        plan=plan.name.value if plan else None, unknown_product=plan is None, status=s.status,
        amount_cents=s.amount, currency=s.currency, recurring_interval=s.recurring_interval,
        current_period_start=s.current_period_start, current_period_end=s.current_period_end,
        cancel_at_period_end=s.cancel_at_period_end, canceled_at=s.canceled_at, started_at=s.started_at,
        ends_at=s.ends_at, ended_at=s.ended_at if isinstance(s, Subscription) else None,
        checkout_id=s.checkout_id if isinstance(s, Subscription) else None, version=version, event_ts=event_ts)


async def _customer_ref(ctx: Ctx, ref: Any, customer_id: str) -> str | None:
    """The user behind a nested customer; records the link if we had not seen the customer yet."""
    user_id = ref.user_id if ref else None
    if user_id:
        await ctx.touch(user_id)
        # Lowest possible version: fills a gap, never overwrites what a customer.* event wrote.
        lowest = LOWEST
        await repo.upsert_customer(ctx.conn, CustomerRow(id=customer_id, user_id=user_id, deleted_at=None,
                                                         version=lowest, event_ts=lowest))
        return user_id
    return await repo.user_of_customer(ctx.conn, customer_id)


async def apply_checkout(ctx: Ctx) -> None:
    c: Checkout = _parse(Checkout, ctx.data)
    user_id = our_user_id(c.external_customer_id)
    await ctx.touch(user_id)
    await repo.upsert_checkout(ctx.conn, CheckoutRow(
        id=c.id, user_id=user_id, product_id=c.product_id, status=c.status,
        subscription_id=c.subscription_id, **ctx.stamp(c)))


async def apply_customer(ctx: Ctx) -> None:
    c: Customer = _parse(Customer, ctx.data)
    deleted_at = c.deleted_at or (ctx.ts if ctx.webhook.type == "customer.deleted" else None)
    await ctx.touch(c.user_id)
    await repo.upsert_customer(ctx.conn, CustomerRow(id=c.id, user_id=c.user_id, deleted_at=deleted_at,
                                                     **ctx.stamp(c)))


async def apply_subscription(ctx: Ctx) -> None:
    s: Subscription = _parse(Subscription, ctx.data)
    user_id = await _customer_ref(ctx, s.customer, s.customer_id)
    await ctx.touch(user_id)
    await repo.upsert_subscription(ctx.conn, _subscription_row(ctx, s, s.customer_id, user_id))


async def apply_order(ctx: Ctx) -> None:
    o: Order = _parse(Order, ctx.data)
    user_id = await _customer_ref(ctx, o.customer, o.customer_id)
    await repo.upsert_order(ctx.conn, OrderRow(
        id=o.id, customer_id=o.customer_id, user_id=user_id, subscription_id=o.subscription_id,
        product_id=o.product_id, status=o.status, billing_reason=o.billing_reason, paid=o.paid,
        total_amount_cents=o.total_amount, refunded_amount_cents=o.refunded_amount, currency=o.currency,
        **ctx.stamp(o)))


async def apply_benefit_grant(ctx: Ctx) -> None:
    g: BenefitGrant = _parse(BenefitGrant, ctx.data)
    if g.benefit.type != "meter_credit":
        ctx.skip_reason = f"benefit type {g.benefit.type} carries no meter credit"
        return
    user_id = await _customer_ref(ctx, g.customer, g.customer_id)
    props = g.benefit.properties
    await repo.upsert_meter_credit(ctx.conn, MeterCreditRow(
        grant_id=g.id, customer_id=g.customer_id, user_id=user_id, subscription_id=g.subscription_id,
        benefit_id=g.benefit_id, meter_id=props.get("meter_id"), units=int64(props.get("units") or 0),
        rollover=bool(props.get("rollover", False)), granted_at=g.granted_at,
        revoked_at=g.revoked_at or (ctx.ts if g.is_revoked else None), **ctx.stamp(g)))


async def apply_customer_state(ctx: Ctx) -> None:
    """A full snapshot: the customer, every active subscription, and the end of any we hold active that it omits."""
    st: CustomerState = _parse(CustomerState, ctx.data)
    await ctx.touch(st.user_id)
    await repo.upsert_customer(ctx.conn, CustomerRow(id=st.id, user_id=st.user_id, deleted_at=st.deleted_at,
                                                     **ctx.stamp(st)))
    user_id = st.user_id or await repo.user_of_customer(ctx.conn, st.id)
    await ctx.touch(user_id)
    for s in st.active_subscriptions:
        await repo.upsert_subscription(ctx.conn, _subscription_row(ctx, s, st.id, user_id))
    if user_id:
        await repo.end_missing_subscriptions(ctx.conn, user_id, st.id, [s.id for s in st.active_subscriptions],
                                             ctx.ts, ctx.ts)


# Event type → how it is applied. A type not listed is logged as `skipped`, with its reason.
APPLY: dict[str, Callable[[Ctx], Awaitable[None]]] = {
    **{f"checkout.{e}": apply_checkout for e in ("created", "updated", "expired")},
    **{f"customer.{e}": apply_customer for e in ("created", "updated", "deleted")},
    **{f"subscription.{e}": apply_subscription
       for e in ("created", "updated", "active", "canceled", "uncanceled", "revoked", "past_due", "cycled",
                 "paused", "resumed")},
    **{f"order.{e}": apply_order for e in ("created", "paid", "refunded", "updated")},
    **{f"benefit_grant.{e}": apply_benefit_grant for e in ("created", "cycled", "updated", "revoked")},
    "customer.state_changed": apply_customer_state,
}


async def apply_webhook(conn: asyncpg.Connection, catalog: PlanCatalog, webhook: Webhook, *,
                        replay: bool = False) -> Outcome:
    """Log + apply in one transaction. A webhook already applied is a no-op (`duplicate`)."""
    env = webhook.envelope
    async with conn.transaction():
        if not await repo.claim_webhook(conn, webhook.id, env.type, env.timestamp, webhook.stored_payload(),
                                        replay=replay):
            return Outcome("duplicate")
        apply = APPLY.get(env.type)
        if apply is None:
            await repo.finish_webhook(conn, webhook.id, "skipped", f"unhandled event type {env.type}")
            return Outcome("skipped", note=f"unhandled event type {env.type}")
        ctx = Ctx(conn, catalog, webhook)
        await apply(ctx)
        status = "skipped" if ctx.skip_reason else "applied"
        note = ctx.skip_reason
        if webhook.had_nul:
            note = "; ".join(n for n in (note, "text with U+0000 stored with U+FFFD in its place") if n)
        if status != "applied" or note:  # claim_webhook wrote `applied` without a note
            await repo.finish_webhook(conn, webhook.id, status, note)
        changes = await note_changes(conn, ctx.before, webhook.id, env.timestamp)
        failpoints.hit("billing.before_commit", webhook.id)
        return Outcome(status, changes, ctx.skip_reason)
