"""The emulator's admin API (under /__emulator__/): faults, lifecycle simulation, delivery modes, inspection; and for
reconciliation: silent subscription changes, bulk seeding, the webhook endpoint's state and deliveries, token scopes,
the rate limit and the 429s it served."""
from __future__ import annotations

import time
from collections import Counter
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import scopes
from .delivery import Deliverer, Mode
from .lifecycle import Lifecycle, LifecycleError
from .middleware import ADMIN_PREFIX
from .silent_changes import ChangeError, change_subscription, seed
from .state import Fault, IngestRule
from .webhook_endpoints import delivery_to_polar, failure_streak


async def _body(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        data = None
    return data if isinstance(data, dict) else {}


KINDS = ("500", "502", "429", "timeout", "drop", "hold")


async def set_fault(request: Request) -> Response:
    """{"path": "/v1/events/ingest", "kind": "500|502|429|timeout|drop|hold", "count": N, "retry_after": s,
    "hang_seconds": s}. timeout: hang, then 504; hold: do the work, then hold the answer hang_seconds."""
    b = await _body(request)
    if b.get("kind") not in KINDS or not b.get("path"):
        return JSONResponse({"error": f"path and kind ({'|'.join(KINDS)}) are required"}, status_code=400)
    fault = Fault(path=b["path"], kind=b["kind"], remaining=int(b.get("count", 1)),
                  retry_after=int(b.get("retry_after", 1)), hang_seconds=float(b.get("hang_seconds", 30)))
    request.app.state.store.faults.append(fault)
    return JSONResponse(fault.__dict__, status_code=201)


async def set_latency(request: Request) -> Response:
    request.app.state.store.latency = float((await _body(request)).get("seconds", 0))
    return JSONResponse({"latency": request.app.state.store.latency})


async def set_ingest_rule(request: Request) -> Response:
    """{"key": "model", "value": "bad"} rejects events with metadata.model == "bad"; no key: external_id == value."""
    b = await _body(request)
    rule = IngestRule(value=b.get("value"), key=b.get("key"))
    request.app.state.store.ingest_rules.append(rule)
    return JSONResponse(rule.__dict__, status_code=201)


async def clear_faults(request: Request) -> Response:
    store = request.app.state.store
    store.faults.clear()
    store.ingest_rules.clear()
    store.latency = 0.0
    return JSONResponse({"cleared": True})


async def delivery_config(request: Request) -> Response:
    """{"url", "secret", "scheme": standard|legacy, "max_copies": 1..5, "shuffle", "concurrent", "backoff_base"}"""
    d = request.app.state.deliverer
    b = await _body(request)
    if "url" in b:
        d.url = b["url"]
    if "secret" in b:
        d.secret = b["secret"]
    if b.get("scheme") in ("standard", "legacy"):
        d.scheme = b["scheme"]
    if "backoff_base" in b:
        d.settings.webhook_backoff_base = float(b["backoff_base"])
    d.mode = Mode(max_copies=int(b.get("max_copies", d.mode.max_copies)), shuffle=bool(b.get("shuffle", d.mode.shuffle)),
                  concurrent=bool(b.get("concurrent", d.mode.concurrent)))
    return JSONResponse({"url": d.url, "scheme": d.scheme, "mode": d.mode.__dict__})


async def simulate(request: Request) -> Response:
    """POST /__emulator__/simulate/<action> {"external_customer_id", "product_id"?, "checkout_id"?}"""
    action = request.path_params["action"]
    lifecycle: Lifecycle = request.app.state.lifecycle
    if action not in Lifecycle.ACTIONS:
        return JSONResponse({"error": f"action must be one of {', '.join(Lifecycle.ACTIONS)}"}, status_code=404)
    b = await _body(request)
    user = b.get("external_customer_id")
    if not user:
        return JSONResponse({"error": "external_customer_id is required"}, status_code=400)
    try:
        if action == "purchase":
            checkout = request.app.state.store.checkouts.get(b.get("checkout_id") or "")
            product = b.get("product_id") or (checkout or {}).get("product_id")
            sent = lifecycle.purchase(user, product or "", b.get("checkout_id"))
        else:
            sent = getattr(lifecycle, action)(user)
    except LifecycleError as exc:
        return JSONResponse({"error": str(exc)}, status_code=409)
    return JSONResponse({"webhooks": sent})


async def complete_checkout(request: Request) -> Response:
    """What a customer paying on Polar's checkout page causes: the purchase webhooks for that checkout."""
    store = request.app.state.store
    checkout = store.checkouts.get(request.path_params["checkout_id"])
    if checkout is None or not checkout.get("external_customer_id"):
        return JSONResponse({"error": "no such checkout with an external customer id"}, status_code=404)
    sent = request.app.state.lifecycle.purchase(checkout["external_customer_id"], checkout["product_id"], checkout["id"])
    return JSONResponse({"webhooks": sent})


async def inspect_events(request: Request) -> Response:
    store = request.app.state.store
    now = time.time()
    per_minute = Counter(int((now - t) // 60) for t, *_ in store.requests)
    return JSONResponse({"events": store.events, "batches": store.batches,
                         "requests_last_minute": per_minute.get(0, 0),
                         "requests": [{"at": t, "method": m, "path": p, "status": s} for t, m, p, s in store.requests]})


async def inspect_webhooks(request: Request) -> Response:
    await request.app.state.deliverer.drain(timeout=float(request.query_params.get("wait", 0)) or 0.001)
    return JSONResponse({"webhooks": [e.summary() for e in request.app.state.deliverer.events]})


async def reset(request: Request) -> Response:
    from .state import Store

    old: Store = request.app.state.store
    fresh = Store(old.settings)
    old.__dict__.update(fresh.__dict__)
    request.app.state.deliverer.reset()
    return JSONResponse({"reset": True})


def _error(exc: ChangeError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=409 if exc.conflict else 400)


async def change_subscription_silently(request: Request) -> Response:
    """PATCH /__emulator__/subscriptions/{subscription id | external customer id} {"status", "product_id",
    "cancel_at_period_end", "ends_at", "current_period_start", "current_period_end", "revoke": true}: no webhook."""
    store, ref = request.app.state.store, request.path_params["ref"]
    sub = store.subscriptions.get(ref)
    if sub is None:
        try:
            sub = request.app.state.lifecycle.subscription_of(ref)
        except LifecycleError:
            return JSONResponse({"error": f"no subscription {ref} and no customer with that external id"},
                                status_code=404)
    try:
        return JSONResponse(change_subscription(request.app.state.lifecycle, sub, await _body(request)))
    except ChangeError as exc:
        return _error(exc)


async def seed_customers(request: Request) -> Response:
    """POST /__emulator__/seed {"count": 300, "prefix": "seed-", "mix": {"team": 50, "trialing": 5, "canceling": 5,
    "past_due": 10, "canceled": 20, "unpaid": 5, "incomplete": 5}, "without_external_id": 3}: the rest of `count` is
    Pro, active. No webhook is sent."""
    b = await _body(request)
    try:
        return JSONResponse(seed(request.app.state.lifecycle, b.get("count", 0), str(b.get("prefix", "seed-")),
                                 b.get("mix") or {}, b.get("without_external_id", 0)), status_code=201)
    except ChangeError as exc:
        return _error(exc)


def _endpoint_state(request: Request) -> dict[str, Any]:
    d: Deliverer = request.app.state.deliverer
    ep, settings = d.endpoint, request.app.state.store.settings
    mine = [e for e in d.events if e.endpoint_id == ep.id]
    return {"endpoint": ep.to_polar(), "disabled_at": ep.disabled_at, "failure_streak": failure_streak(ep, d.events),
            "disable_after": settings.webhook_disable_after, "reject_local_urls": settings.webhook_reject_local_urls,
            "events": {"total": len(mine), "succeeded": sum(e.succeeded is True for e in mine),
                       "failed": sum(e.succeeded is False for e in mine), "skipped": sum(e.skipped for e in mine),
                       "pending": sum(e.succeeded is None and not e.skipped for e in mine)},
            "deliveries": sum(len(e.deliveries) for e in mine)}


async def webhook_endpoint(request: Request) -> Response:
    """GET: the endpoint as Polar shows it, its failure streak and event counts. POST {"enabled", "url",
    "reject_local_urls", "disable_after"}: set them directly (no validation, no Polar rules)."""
    if request.method == "POST":
        b, ep = await _body(request), request.app.state.deliverer.endpoint
        settings = request.app.state.store.settings
        if "enabled" in b:
            ep.enabled = bool(b["enabled"])
            ep.touch()
        if "url" in b:
            ep.url = b["url"]
        if "reject_local_urls" in b:
            settings.webhook_reject_local_urls = bool(b["reject_local_urls"])
        if "disable_after" in b:
            settings.webhook_disable_after = max(1, int(b["disable_after"]))
    return JSONResponse(_endpoint_state(request))


async def inspect_deliveries(request: Request) -> Response:
    """Every delivery (HTTP attempt) in Polar's shape, oldest first; ?wait=s first waits for sends in flight."""
    d: Deliverer = request.app.state.deliverer
    await d.drain(timeout=float(request.query_params.get("wait", 0)) or 0.001)
    rows = sorted(((x, e) for e in d.events for x in e.deliveries), key=lambda r: r[0].created_at)
    return JSONResponse({"deliveries": [delivery_to_polar(x, e) for x, e in rows]})


async def rate_limit(request: Request) -> Response:
    """GET: the limit, the window, and the 429s served per path (`throttled`: by the rate limit, i.e. caused by the
    callers' own traffic; `injected`: by a fault). POST {"per_minute", "window_seconds"} changes the limit."""
    store = request.app.state.store
    if request.method == "POST":
        b = await _body(request)
        if "per_minute" in b:
            store.settings.rate_limit_per_minute = int(b["per_minute"])
        if "window_seconds" in b:
            store.settings.rate_limit_window_seconds = float(b["window_seconds"])
    return JSONResponse({"per_window": store.settings.rate_limit_per_minute,
                         "window_seconds": store.settings.rate_limit_window_seconds,
                         "window": store.rate_window(store.settings.access_token),
                         "throttled": dict(store.throttled), "throttled_total": sum(store.throttled.values()),
                         "injected": dict(store.injected_429)})


async def token_scopes(request: Request) -> Response:
    """POST {"scopes": ["webhooks:read", ...]} (null: every scope): what the API token may do from now on."""
    store = request.app.state.store
    if request.method == "POST":
        value = (await _body(request)).get("scopes")
        store.token_scopes = None if value is None else scopes.parse(" ".join(value))
    return JSONResponse({"scopes": None if store.token_scopes is None else sorted(store.token_scopes)})


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


ROUTES = [
    Route(f"{ADMIN_PREFIX}/health", health, methods=["GET"]),
    Route(f"{ADMIN_PREFIX}/faults", set_fault, methods=["POST"]),
    Route(f"{ADMIN_PREFIX}/faults", clear_faults, methods=["DELETE"]),
    Route(f"{ADMIN_PREFIX}/latency", set_latency, methods=["POST"]),
    Route(f"{ADMIN_PREFIX}/ingest-rules", set_ingest_rule, methods=["POST"]),
    Route(f"{ADMIN_PREFIX}/delivery", delivery_config, methods=["POST"]),
    Route(f"{ADMIN_PREFIX}/simulate/{{action}}", simulate, methods=["POST"]),
    Route(f"{ADMIN_PREFIX}/checkouts/{{checkout_id}}/complete", complete_checkout, methods=["POST"]),
    Route(f"{ADMIN_PREFIX}/events", inspect_events, methods=["GET"]),
    Route(f"{ADMIN_PREFIX}/webhooks", inspect_webhooks, methods=["GET"]),
    Route(f"{ADMIN_PREFIX}/reset", reset, methods=["POST"]),
    Route(f"{ADMIN_PREFIX}/subscriptions/{{ref}}", change_subscription_silently, methods=["PATCH"]),
    Route(f"{ADMIN_PREFIX}/seed", seed_customers, methods=["POST"]),
    Route(f"{ADMIN_PREFIX}/webhook-endpoint", webhook_endpoint, methods=["GET", "POST"]),
    Route(f"{ADMIN_PREFIX}/deliveries", inspect_deliveries, methods=["GET"]),
    Route(f"{ADMIN_PREFIX}/rate-limit", rate_limit, methods=["GET", "POST"]),
    Route(f"{ADMIN_PREFIX}/token-scopes", token_scopes, methods=["GET", "POST"]),
]
