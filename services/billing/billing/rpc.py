"""billing.rpc.*: the chat service's questions, answered over core NATS request/reply (shared.messaging.rpc).

Each endpoint is declared with its verb and request contract; it returns a reply contract or raises `RpcError`.
"""
from __future__ import annotations

import logging
import uuid
from datetime import date, timedelta
from typing import Any

import asyncpg
from polar.v2026_10 import PolarAsync
from polar_billing_client.contracts import (
    CheckoutRequest,
    CheckReply,
    CheckRequest,
    Credits,
    LinkReply,
    PortalRequest,
    ReleaseReply,
    ReleaseRequest,
    ReserveReply,
    ReserveRequest,
    StatusReply,
    StatusRequest,
    UsageQuery,
    UsageReport,
    UsageSums,
)
from pydantic import PrivateAttr

from shared import polar
from shared.messaging.rpc import Endpoint, RpcError, endpoint
from shared.periods import Period
from shared.plans import LimitName
from shared.polar_budget import Priority

from . import analytics
from . import repository as repo
from .limits import UserState, evaluate
from .runtime import BillingRuntime

log = logging.getLogger(__name__)

POLAR_ATTEMPTS = 3  # a chat user is waiting: a few quick retries, then an answer
INTERACTIVE_WAIT = 5.0  # seconds a link request may wait for the Polar budget before "retry in N s"


# --- limits ---------------------------------------------------------------------------------------------------
@endpoint("check", CheckRequest)
async def check(req: CheckRequest, rt: BillingRuntime) -> CheckReply:
    now = rt.now()
    row = await rt.reads.run(lambda conn: repo.user_state(conn, req.user_id, now, req.thread_id))
    return evaluate(UserState.from_row(row), req, rt.catalog, now).reply


@endpoint("reserve", ReserveRequest)
async def reserve(req: ReserveRequest, rt: BillingRuntime) -> ReserveReply:
    """Check and hold, atomically: the user's lock serializes reserves, so N at once never over-admit."""
    now = rt.now()
    async with rt.pool.acquire() as conn, conn.transaction():
        await repo.lock_user(conn, req.user_id)
        state = UserState.from_row(await repo.user_state(conn, req.user_id, now, req.thread_id))
        ev = evaluate(state, req, rt.catalog, now)
        reply = ReserveReply(**ev.reply.model_dump())
        if ev.reply.allowed:
            reply.reservation_id = f"rsv_{uuid.uuid4().hex}"
            await repo.insert_reservation(conn, reply.reservation_id, req.user_id, req.thread_id, ev.new_thread,
                                          req.estimated_tokens, ev.period[0], now + timedelta(seconds=req.ttl_seconds))
    return reply


@endpoint("release", ReleaseRequest)
async def release(req: ReleaseRequest, rt: BillingRuntime) -> ReleaseReply:
    async with rt.pool.acquire() as conn:
        return ReleaseReply(released=await repo.release_reservation(conn, req.reservation_id))


@endpoint("status", StatusRequest)
async def status(req: StatusRequest, rt: BillingRuntime) -> StatusReply:
    now = rt.now()

    async def read(conn: asyncpg.Connection) -> tuple[UserState, str | None, int]:
        return (UserState.from_row(await repo.user_state(conn, req.user_id, now, None)),
                await repo.customer_id_of(conn, req.user_id), await repo.credits_granted(conn, req.user_id))

    state, customer_id, granted = await rt.reads.run(read)
    ev = evaluate(state, CheckRequest(user_id=req.user_id), rt.catalog, now)
    sub = state.sub  # shown even when it no longer entitles (a canceled one still says when it ended)
    tokens = ev.reply.limits[LimitName.TOKENS_PER_MONTH.value].used
    used = min(tokens, granted)
    return StatusReply(
        plan=ev.plan.name.value, status=ev.status,
        current_period_start=sub["current_period_start"] if sub else None,
        current_period_end=sub["current_period_end"] if sub else None,
        cancel_at_period_end=bool(sub and sub["cancel_at_period_end"]),
        limits=ev.reply.limits, credits=Credits(granted=granted, used=used, balance=granted - used),
        customer_id=customer_id,
    )


# --- usage analytics ----------------------------------------------------------------------------------------------
class PrebuiltUsageReport(UsageReport):
    """A UsageReport PostgreSQL already wrote as JSON (repository.usage_report_json): sent as it is."""

    _json: str = PrivateAttr("")

    @classmethod
    def of(cls, start: date, end: date, json_text: str) -> PrebuiltUsageReport:
        # Not validated or filled: the fields are never read, only the text is sent.
        report = cls.model_construct(from_=start, to=end, totals=NO_SUMS, rows=[])
        report._json = json_text
        return report

    def model_dump_json(self, **_: Any) -> str:  # the reply is the prebuilt text
        return self._json


NO_SUMS = UsageSums(events=0, input_tokens=0, output_tokens=0, cached_input_tokens=0, billable_tokens=0,
                    cost_usd=None, unpriced_events=0)


@endpoint("usage", UsageQuery)
async def usage(req: UsageQuery, rt: BillingRuntime) -> UsageReport:
    """From usage-sync's daily rollups, never the ledger: a year of history is a few thousand rows at most."""
    async def read(conn: asyncpg.Connection) -> UsageReport:
        period: Period | None = None
        if req.from_ is None or req.to is None:  # only a default needs the user's billing period
            now = rt.now()
            state = UserState.from_row(await repo.user_state(conn, req.user_id, now, None))
            period = evaluate(state, CheckRequest(user_id=req.user_id), rt.catalog, now).period
        try:
            start, end = analytics.date_range(req.from_, req.to, period)
        except analytics.BadRange as exc:
            raise RpcError("invalid_request", str(exc), field=exc.field) from None
        dims = {"by_day": "day" in req.group_by, "by_model": "model" in req.group_by,
                "by_thread": "thread" in req.group_by}
        if req.limit is None or not (dims["by_model"] or dims["by_thread"]):
            return PrebuiltUsageReport.of(start, end, await repo.usage_report_json(conn, req.user_id, start, end,
                                                                                  **dims))
        rows = await repo.usage_sums(conn, req.user_id, start, end, **dims)
        return analytics.report(rows, start, end, req.group_by, req.limit)  # top N + "other": folded here

    return await rt.reads.run(read)


# --- links through Polar --------------------------------------------------------------------------------------
def polar_of(rt: BillingRuntime) -> PolarAsync:
    if rt.polar is None:
        raise RpcError("polar_not_configured", "Polar is not configured (POLAR_ACCESS_TOKEN is unset)")
    return rt.polar


async def call_polar(rt: BillingRuntime, what: str, fn: Any) -> Any:
    """shared.polar's reading of Polar's answer, as errors the chat service can act on. A user is waiting: first in
    the deployment's Polar budget, and told to retry rather than kept waiting past INTERACTIVE_WAIT."""
    try:
        return await polar.call(what, fn, attempts=POLAR_ATTEMPTS, budget=rt.budget, priority=Priority.INTERACTIVE,
                                wait_up_to=INTERACTIVE_WAIT)
    except polar.PolarRateLimited as exc:
        raise RpcError("polar_rate_limited", "Polar is rate limiting us; retry later",
                       retry_after=exc.retry_after) from None
    except polar.PolarUnavailable as exc:
        raise RpcError("polar_unavailable", str(exc)) from None


@endpoint("checkout", CheckoutRequest)
async def checkout(req: CheckoutRequest, rt: BillingRuntime) -> LinkReply:
    if req.plan not in ("pro", "team"):
        raise RpcError("unknown_plan", f"plan must be pro or team, not {req.plan!r}"[:200], field="plan")
    product_id = rt.catalog.product_id(req.plan)
    if product_id is None:
        raise RpcError("plan_not_available", f"no Polar product is configured for {req.plan}", field="plan")
    client = polar_of(rt)
    base = rt.settings.public_base_url.rstrip("/")
    try:
        c = await call_polar(rt, "checkouts.create", lambda: client.checkouts.create(
            products=[product_id], external_customer_id=req.user_id,
            success_url=req.success_url or f"{base}/subscription/success?checkout_id={{CHECKOUT_ID}}",
            return_url=req.return_url or f"{base}/subscription/cancel",
            metadata={"user_id": req.user_id, "plan": req.plan}))
    except polar.PolarRejected as exc:
        raise RpcError("polar_rejected", exc.summary()) from None
    async with rt.pool.acquire() as conn:  # reconciliation looks at this user first if no subscription follows
        await repo.record_created_checkout(conn, c.id, req.user_id, product_id)
    log.info("checkout.created", extra={"user_id": req.user_id, "plan": req.plan, "checkout_id": c.id})
    return LinkReply(url=c.url, expires_at=c.expires_at, checkout_id=c.id)


@endpoint("portal", PortalRequest)
async def portal(req: PortalRequest, rt: BillingRuntime) -> LinkReply:
    client = polar_of(rt)
    kwargs: dict[str, Any] = {"external_customer_id": req.user_id}
    if req.return_url:
        kwargs["return_url"] = req.return_url
    try:
        s = await call_polar(rt, "customer_sessions.create", lambda: client.customer_sessions.create(**kwargs))
    except polar.PolarRejected as exc:
        if "does not exist" in exc.summary():
            raise RpcError("no_customer", "Polar has no customer for this user yet (no purchase)") from None
        raise RpcError("polar_rejected", exc.summary()) from None
    # The URL carries a bearer token (docs/polar.md §11): it goes to the caller only, never to a log line or a row.
    log.info("portal.session_created", extra={"user_id": req.user_id})
    return LinkReply(url=s.customer_portal_url, expires_at=s.expires_at)


ENDPOINTS: tuple[Endpoint[Any, BillingRuntime], ...] = (check, reserve, release, status, usage, checkout, portal)
