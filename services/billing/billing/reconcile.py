"""Polar as the source of truth: billing's state is compared with Polar's and repaired, so that lost webhooks (an
outage longer than Polar's retries, a disabled endpoint, events Polar skipped) never leave a user on the wrong plan.

- Backfill: on start with an empty state (a new installation on an organization with customers), and on demand, the
  organization's customers and subscriptions are imported through the same monotonic upserts as webhooks.
- Sweep, every POLAR_RECONCILE_INTERVAL_SECONDS (one billing instance at a time, under an advisory lock):
  1. the webhook endpoint: re-enabled when Polar disabled it, and the events whose deliveries failed since it was last
     healthy (or that Polar gave up on) redelivered once; they carry their original `webhook-id`, so the webhook
     log's dedup makes a repeat harmless;
  2. the users whose access matters most first (a checkout with no subscription after it, a period that ended without
     a renewal, users active today), one listing each;
  3. every subscription, a page of 100 at a time;
  4. meters: the ledger's synced billable tokens against Polar's meter, per user and billing period (reported only).
- A snapshot never regresses a newer row: it is stamped with Polar's `modified_at` (else `created_at`), and at an equal
  version a webhook wins ties. Every repair writes a `reconcile_repairs` row and, when the user's plan, status or
  cancel-at-period-end moved, the same `billing.event.subscription.changed` a webhook would.
- Every request takes the `reconcile` share of the deployment's Polar budget (shared/polar_budget.py).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import asyncpg
import httpx
from nats.aio.msg import Msg
from polar.base import PolarClientError
from polar.v2026_10 import PolarAsync
from prometheus_client import Counter, Gauge

from shared import polar
from shared.plans import PlanCatalog
from shared.polar_budget import Budget, Priority

from . import repository as repo
from .apply_webhook import LOWEST, PlanStatus, note_changes, plan_of, subscription_row
from .polar_models import Customer, Subscription
from .repository import RECONCILED_FIELDS, CustomerRow
from .runtime import BillingRuntime
from .settings import BillingSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

SWEEPS = Counter("billing_reconcile_sweeps_total", "Reconciliation runs, by kind and outcome", ["kind", "outcome"])
COMPARED = Counter("billing_reconcile_compared_total", "Polar objects compared with ours", ["object"])
DRIFTS = Counter("billing_reconcile_drifts_total", "Differences found between Polar and us, by field", ["field"])
REPAIRS = Counter("billing_reconcile_repairs_total", "Rows repaired from Polar, by source", ["source"])
LAST_SUCCESS = Gauge("billing_reconcile_last_success_timestamp_seconds", "When the last sweep finished cleanly")
UNMAPPED = Gauge("billing_polar_customers_without_external_id",
                 "Polar customers without an external id (kept, mapped to no user), as of the last import")
ENDPOINT_ENABLED = Gauge("billing_webhook_endpoint_enabled",
                         "Our webhook endpoint at Polar: 1 enabled, 0 disabled, -1 unknown (not found or no scope)")
ENDPOINT_CHECKS = Counter("billing_webhook_endpoint_checks_total", "Checks of our webhook endpoint, by result",
                          ["result"])
REDELIVERED = Counter("billing_webhooks_redelivered_total", "Webhook events we asked Polar to redeliver")
METER_DRIFTS = Counter("billing_meter_drifts_total", "Users and periods whose Polar meter differs from our ledger")
for _kind in ("backfill", "sweep"):
    for _outcome in ("ok", "failed"):
        SWEEPS.labels(_kind, _outcome)
for _result in ("healthy", "reenabled", "refused", "no_scope", "not_found", "failed"):
    ENDPOINT_CHECKS.labels(_result)
ENDPOINT_ENABLED.set(-1)

PAGE = 100  # Polar's largest page (docs/polar.md: a larger limit is served as 100)
PRIORITY_USERS = 100  # listings per sweep for the users who matter most
METER_USERS = 200  # meter comparisons per sweep
POLAR_ATTEMPTS_PER_EVENT = 10  # Polar's own retries of a webhook before it gives up (docs/polar.md)
GIVE_UP_LOOKBACK = timedelta(hours=6)
REDELIVERIES = 3  # per event, while it is not applied
REDELIVER_AGAIN_AFTER = timedelta(seconds=30)
FIRST_LOOKBACK = timedelta(days=3)  # the first check of an endpoint: how far back failed deliveries are redelivered
WEBHOOK_PATH = "/webhooks/polar"


@dataclass
class Result:
    compared: int = 0
    repairs: int = 0
    drifts: Tally[str] = field(default_factory=Tally)
    unmapped_customers: int = 0
    redelivered: int = 0
    meter_drifts: int = 0
    endpoint: str | None = None  # healthy | reenabled | refused | no_scope | not_found | failed

    def line(self) -> dict[str, Any]:
        return {"compared": self.compared, "drifts": sum(self.drifts.values()), "repairs": self.repairs,
                "drift_fields": dict(self.drifts), "redelivered": self.redelivered,
                "meter_drifts": self.meter_drifts, "endpoint": self.endpoint,
                "customers_without_external_id": self.unmapped_customers}


def differing(ours: asyncpg.Record | None, theirs: Subscription) -> list[str]:
    if ours is None:
        return ["missing"]
    return [f for f in RECONCILED_FIELDS if ours[f] != getattr(theirs, f)]


def _as_dict(obj: Any) -> dict[str, Any]:
    """A polar-sdk output (a slotted dataclass) as the JSON-shaped dict our tolerant models parse."""
    return dataclasses.asdict(obj)


def _snapshot(row: asyncpg.Record | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {f: (row[f].isoformat() if isinstance(row[f], datetime) else row[f]) for f in RECONCILED_FIELDS}


class Reconciler:
    def __init__(self, pool: asyncpg.Pool, client: PolarAsync, catalog: PlanCatalog, budget: Budget,
                 settings: BillingSettings, *, wakeup: asyncio.Event | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.pool = pool
        self.polar = client
        self.catalog = catalog
        self.budget = budget
        self.settings = settings
        self.wakeup = wakeup
        self.now = clock
        self._warned: set[str] = set()

    async def call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        return await polar.call(what, fn, attempts=3, budget=self.budget, priority=Priority.RECONCILE)

    # --- backfill -------------------------------------------------------------------------------------------------
    async def backfill(self) -> Result:
        """Import every customer and subscription of the organization (monotonic: nothing newer is regressed)."""
        result = Result()
        await self._customers(result)
        await self._all_subscriptions(result, "backfill")
        return result

    async def _customers(self, result: Result) -> None:
        page, unmapped = 1, 0
        while True:
            listing = await self.call("customers.list", partial(self.polar.customers.list, page=page, limit=PAGE))
            async with self.pool.acquire() as conn:
                for item in listing.items:
                    c = Customer.model_validate(_as_dict(item))
                    COMPARED.labels("customer").inc()
                    result.compared += 1
                    if c.user_id is None:
                        unmapped += 1
                    await repo.upsert_customer(conn, CustomerRow(id=c.id, user_id=c.user_id, deleted_at=c.deleted_at,
                                                                 version=c.version(LOWEST), event_ts=LOWEST))
            if page >= listing.pagination.max_page:
                break
            page += 1
        result.unmapped_customers = unmapped
        UNMAPPED.set(unmapped)
        if unmapped:  # once per import, not per row
            log.warning("reconcile.customers_without_external_id", extra={"customers": unmapped})

    # --- the sweep ------------------------------------------------------------------------------------------------
    async def sweep(self) -> Result:
        result = Result()
        result.endpoint = await self.heal_webhook_endpoint(result)
        await self._priority_users(result)
        await self._all_subscriptions(result, "reconcile")
        await self._meters(result)
        return result

    async def _priority_users(self, result: Result) -> None:
        async with self.pool.acquire() as conn:
            users = await repo.priority_users(conn, self.now(), PRIORITY_USERS)
        for user_id in users:
            listing = await self.call("subscriptions.list", partial(self.polar.subscriptions.list,
                                                                         external_customer_id=user_id, limit=PAGE))
            await self._compare(listing.items, result, "reconcile")

    async def _all_subscriptions(self, result: Result, source: str) -> None:
        page = 1
        while True:
            # Newest first: a subscription created during the sweep pushes the rest down a page (seen twice, never
            # missed).
            listing = await self.call("subscriptions.list", partial(self.polar.subscriptions.list,
                                                                         page=page, limit=PAGE, sorting=["-started_at"]))
            await self._compare(listing.items, result, source)
            if page >= listing.pagination.max_page:
                break
            page += 1

    async def _compare(self, items: list[Any], result: Result, source: str) -> None:
        theirs = [Subscription.model_validate(_as_dict(i)) for i in items]
        async with self.pool.acquire() as conn:
            ours = await repo.subscriptions_by_id(conn, [s.id for s in theirs])
        for s in theirs:
            COMPARED.labels("subscription").inc()
            result.compared += 1
            if differing(ours.get(s.id), s):
                await self._repair(s, result, source)

    async def _repair(self, s: Subscription, result: Result, source: str) -> None:
        """In one transaction, under the user's lock: re-read our row, write Polar's when it is newer (or equal and
        different: Polar is the truth), the repair row, and the change event a webhook would have caused."""
        user_id = s.customer.user_id if s.customer else None
        async with self.pool.acquire() as conn, conn.transaction():
            if user_id is None:
                user_id = await repo.user_of_customer(conn, s.customer_id)
            before: dict[str, PlanStatus] = {}
            if user_id:
                await repo.lock_user(conn, user_id)
                before[user_id] = await plan_of(conn, user_id)
                await repo.upsert_customer(conn, CustomerRow(id=s.customer_id, user_id=user_id, deleted_at=None,
                                                             version=LOWEST, event_ts=LOWEST))
            ours = await repo.subscription_for_repair(conn, s.id)
            fields = differing(ours, s)
            if ours is not None and not fields:
                return  # a webhook got there first
            version = s.version(LOWEST)
            if ours is None or version > ours["version"]:
                event_ts = LOWEST
            elif version == ours["version"]:
                # Same version, different content: Polar changed it without a newer modified_at. Polar wins.
                event_ts = max(self.now(), ours["event_ts"] + timedelta(microseconds=1))
            else:
                for f in fields:
                    DRIFTS.labels(f).inc()
                result.drifts.update(fields)
                log.warning("reconcile.polar_older_than_ours", extra={"subscription_id": s.id, "fields": fields})
                return
            row = subscription_row(self.catalog, s, s.customer_id, user_id, source=source, version=version,
                                   event_ts=event_ts)
            if not await repo.upsert_subscription(conn, row):
                return
            after = _snapshot(await repo.subscription_for_repair(conn, s.id)) or {}
            repair_id = await repo.add_repair(conn, object="subscription", object_id=s.id, user_id=user_id,
                                              fields=fields, before=_snapshot(ours), after=after, source=source)
            changes = await note_changes(conn, before, f"{source}:{repair_id}", self.now())
        for f in fields:
            DRIFTS.labels(f).inc()
        result.drifts.update(fields)
        result.repairs += 1
        REPAIRS.labels(source).inc()
        log.info("reconcile.repaired", extra={"subscription_id": s.id, "user_id": user_id, "fields": fields,
                                              "source": source, "repair_id": repair_id})
        if changes and self.wakeup is not None:
            self.wakeup.set()

    # --- the webhook endpoint -------------------------------------------------------------------------------------
    def _warn_once(self, key: str, event: str, **extra: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(event, extra=extra)

    async def _endpoint(self) -> Any | None:
        wanted_id = self.settings.polar_webhook_endpoint_id
        wanted_url = self.settings.public_base_url.rstrip("/") + WEBHOOK_PATH
        page = 1
        while True:
            listing = await self.call("webhooks.list_webhook_endpoints",
                                      partial(self.polar.webhooks.list_webhook_endpoints, page=page, limit=PAGE))
            for ep in listing.items:
                if (ep.id == wanted_id) if wanted_id else (ep.url.rstrip("/") == wanted_url):
                    return ep
            if page >= listing.pagination.max_page:
                return None
            page += 1

    async def heal_webhook_endpoint(self, result: Result) -> str:
        """Re-enable our endpoint if Polar disabled it, then redeliver what it missed. Returns the check's result."""
        now = self.now()
        try:
            ep = await self._endpoint()
        except PolarClientError as exc:
            if exc.status_code in (401, 403):
                self._warn_once("scope", "reconcile.webhook_endpoint_no_scope",
                                hint="the access token lacks webhooks:read / webhooks:write; the endpoint cannot be "
                                     "checked or healed, the rest of reconciliation runs")
                return self._endpoint_result("no_scope", None)
            raise
        if ep is None:
            self._warn_once("missing", "reconcile.webhook_endpoint_not_found",
                            endpoint_id=self.settings.polar_webhook_endpoint_id,
                            url=self.settings.public_base_url.rstrip("/") + WEBHOOK_PATH)
            return self._endpoint_result("not_found", None)
        async with self.pool.acquire() as conn:
            health = await repo.endpoint_health(conn)
        last_healthy = health["last_healthy_at"] if health and health["last_healthy_at"] else now - FIRST_LOOKBACK
        outcome = "healthy"
        if not await self._our_edge_answers():
            # Re-enabled or redelivered now, Polar would only fail again (and disable it): wait for ingress. The last
            # healthy time stays where it was, so what fails meanwhile is redelivered later.
            log.warning("reconcile.ingress_not_answering", extra={"endpoint_id": ep.id, "enabled": ep.enabled})
            async with self.pool.acquire() as conn:
                await repo.set_endpoint_health(conn, endpoint_id=ep.id, enabled=ep.enabled, healthy_at=None,
                                               note="our ingress does not answer at PUBLIC_BASE_URL")
            return self._endpoint_result("failed", ep.enabled)
        if not ep.enabled:
            try:
                await self.call("webhooks.update_webhook_endpoint", lambda: self.polar.webhooks.update_webhook_endpoint(
                    ep.id, enabled=True))
            except (polar.PolarRejected, PolarClientError) as exc:
                reason = exc.summary() if isinstance(exc, polar.PolarRejected) else f"HTTP {exc.status_code}"
                # Polar refuses endpoints whose host is not public (docs/polar.md): say so plainly, every sweep.
                log.error("reconcile.webhook_endpoint_enable_refused",
                          extra={"endpoint_id": ep.id, "reason": reason[:300]})
                async with self.pool.acquire() as conn:
                    await repo.set_endpoint_health(conn, endpoint_id=ep.id, enabled=False, healthy_at=None,
                                                   note=f"Polar refused to enable it: {reason[:300]}")
                return self._endpoint_result("refused", False)
            log.warning("reconcile.webhook_endpoint_reenabled", extra={"endpoint_id": ep.id,
                                                                       "last_healthy_at": last_healthy.isoformat()})
            outcome = "reenabled"
        result.redelivered = await self._redeliver(ep.id, last_healthy, everything_failed=outcome == "reenabled")
        async with self.pool.acquire() as conn:
            await repo.set_endpoint_health(conn, endpoint_id=ep.id, enabled=True, healthy_at=now,
                                           note=f"{outcome}; {result.redelivered} event(s) redelivered")
        return self._endpoint_result(outcome, True)

    async def _our_edge_answers(self) -> bool:
        """Ingress's readiness, at the address Polar delivers to."""
        try:
            async with httpx.AsyncClient(timeout=3.0) as http:
                return (await http.get(self.settings.public_base_url.rstrip("/") + "/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    def _endpoint_result(self, outcome: str, enabled: bool | None) -> str:
        ENDPOINT_CHECKS.labels(outcome).inc()
        ENDPOINT_ENABLED.set(-1 if enabled is None else int(enabled))
        return outcome

    async def _redeliver(self, endpoint_id: str, since: datetime, *, everything_failed: bool) -> int:
        """Failed deliveries → their events, each redelivered once unless we applied it already. After a re-enable,
        every event that failed since the endpoint was last healthy; otherwise only those Polar gave up on."""
        # Never less than the lookback: "enabled" is not "delivering", so the last healthy check may postdate the
        # first failures; what we applied already is skipped below, so a wider look costs only listing pages.
        start = min(since, self.now() - GIVE_UP_LOOKBACK)
        failures: Tally[str] = Tally()
        succeeded: set[str] = set()
        page = 1
        while True:
            listing = await self.call("webhooks.list_webhook_deliveries",
                                      partial(self.polar.webhooks.list_webhook_deliveries,
                                              endpoint_id=endpoint_id, succeeded=False,
                                              start_timestamp=start.isoformat(), page=page, limit=PAGE))
            for d in listing.items:
                if d.webhook_event.succeeded:
                    succeeded.add(d.webhook_event.id)
                else:
                    failures[d.webhook_event.id] += 1
            if page >= listing.pagination.max_page:
                break
            page += 1
        wanted = [e for e, n in failures.items() if e not in succeeded
                  and (everything_failed or n >= POLAR_ATTEMPTS_PER_EVENT)]
        if not wanted:
            return 0
        async with self.pool.acquire() as conn:
            # A redelivery that failed too (our edge still down) is asked again a few sweeps later, never forever.
            done = await repo.webhooks_done(conn, wanted, self.now() - REDELIVER_AGAIN_AFTER, REDELIVERIES)
        sent = 0
        for event_id in wanted:
            if event_id in done:
                continue
            await self.call("webhooks.redeliver_webhook_event",
                            partial(self.polar.webhooks.redeliver_webhook_event, event_id))
            async with self.pool.acquire() as conn:
                await repo.mark_redelivered(conn, event_id)
            REDELIVERED.inc()
            sent += 1
        log.info("reconcile.webhooks_redelivered", extra={"endpoint_id": endpoint_id, "events": sent})
        return sent

    # --- meters ---------------------------------------------------------------------------------------------------
    async def _meters(self, result: Result) -> None:
        """Polar's meter against our ledger, per user and billing period. Polar's meter is never "fixed": a
        difference beyond what the outbox still holds is counted, logged once, and shown by the CLI."""
        meter_id = self.settings.polar_tokens_meter_id
        if meter_id is None:
            return
        async with self.pool.acquire() as conn:
            periods = await repo.metered_periods(conn, self.now(), METER_USERS)
        for p in periods:
            q = await self.call("meters.quantities", partial(
                self.polar.meters.quantities, meter_id, start_timestamp=p["period_start"].isoformat(),
                end_timestamp=p["period_end"].isoformat(), interval="month", external_customer_id=p["user_id"]))
            at_polar, synced, pending = round(q.total), p["synced"], p["pending"]
            async with self.pool.acquire() as conn:
                # In flight: sent but not yet marked synced, so Polar may already hold part of `pending`.
                if synced <= at_polar <= synced + pending:
                    await repo.clear_meter_drift(conn, p["user_id"], p["period_start"])
                    continue
                result.meter_drifts += 1
                if await repo.note_meter_drift(conn, p["user_id"], p["period_start"], synced, at_polar, pending):
                    METER_DRIFTS.inc()
                    log.warning("reconcile.meter_drift", extra={
                        "user_id": p["user_id"], "period_start": p["period_start"].isoformat(),
                        "ledger_tokens": synced, "polar_tokens": at_polar, "pending_tokens": pending})


@asynccontextmanager
async def sweeping(pool: asyncpg.Pool) -> AsyncIterator[bool]:
    """One billing instance sweeps at a time: True when this one holds the lock."""
    async with pool.acquire() as conn:
        held = await conn.fetchval("SELECT pg_try_advisory_lock(hashtext('billing.reconcile'))")
        try:
            yield bool(held)
        finally:
            if held:
                await conn.execute("SELECT pg_advisory_unlock(hashtext('billing.reconcile'))")


async def run_once(reconciler: Reconciler, kind: str) -> Result | None:
    """A backfill or a sweep, with its row in reconcile_sweeps and its metrics. None: another instance is at it."""
    async with sweeping(reconciler.pool) as mine:
        if not mine:
            return None
        async with reconciler.pool.acquire() as conn:
            sweep_id = await repo.start_sweep(conn, kind)
        t0 = time.monotonic()
        result = Result()
        error: str | None = None
        try:
            result = await (reconciler.backfill() if kind == "backfill" else reconciler.sweep())
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            raise
        finally:
            async with reconciler.pool.acquire() as conn:
                await repo.finish_sweep(conn, sweep_id, compared=result.compared,
                                        drifts=sum(result.drifts.values()), repairs=result.repairs, error=error)
            SWEEPS.labels(kind, "failed" if error else "ok").inc()
        LAST_SUCCESS.set(time.time())
        log.info(f"reconcile.{kind}_done", extra={**result.line(), "seconds": round(time.monotonic() - t0, 2)})
        return result


OPS_SUBJECT = "billing.ops.reconcile"  # the operator's "sweep now" (polar-billing reconcile run), not the chat API


async def loop(rt: BillingRuntime) -> None:
    """Backfill an empty state once, then sweep every interval until shutdown; `polar-billing reconcile run` asks
    for one now, over NATS, so the operator needs no Polar token of their own."""
    interval = rt.settings.polar_reconcile_interval_seconds
    r = Reconciler(rt.pool, rt.polar, rt.catalog, rt.budget, rt.settings, wakeup=rt.outbox_wakeup,
                   clock=rt.now) if rt.polar is not None else None

    async def on_request(msg: Msg) -> None:
        kind = "backfill" if msg.data.strip() == b"backfill" else "sweep"
        if r is None:
            reply: dict[str, Any] = {"error": "Polar is not configured (POLAR_ACCESS_TOKEN is unset)"}
        else:
            try:
                result = await run_once(r, kind)
                reply = {"kind": kind, **result.line()} if result else {"error": "another sweep is running"}
            except Exception as exc:  # noqa: BLE001 - the operator gets the reason; the log has the trace
                reply = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        await msg.respond(json.dumps(reply).encode())

    sub = await rt.nc.subscribe(OPS_SUBJECT, queue="billing", cb=on_request)
    try:
        if r is None or not interval:
            log.info("reconcile.off", extra={"reason": "Polar is not configured" if r is None
                                             else "POLAR_RECONCILE_INTERVAL_SECONDS=0"})
            await rt.stopping.wait()
            return
        async with rt.pool.acquire() as conn:
            empty = await repo.state_is_empty(conn)
        while not rt.stopping.is_set():
            kind = "backfill" if empty else "sweep"
            try:
                if await run_once(r, kind) is not None:
                    empty = False
            except Exception:
                log.exception(f"reconcile.{kind}_failed")
            if kind == "backfill" and not empty:
                continue  # imported: sweep at once (the webhook endpoint's health, meters), then every interval
            wait = min(interval, 5.0) if empty else interval  # a failed import is tried again soon
            try:
                await asyncio.wait_for(rt.stopping.wait(), timeout=wait)
            except TimeoutError:
                pass
    finally:
        await sub.unsubscribe()
