"""The emulator's admin API (under /__emulator__/): faults, lifecycle simulation, delivery modes, inspection."""
from __future__ import annotations

import time
from collections import Counter
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .delivery import Mode
from .lifecycle import Lifecycle, LifecycleError
from .middleware import ADMIN_PREFIX
from .state import Fault, IngestRule


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
    request.app.state.deliverer.events.clear()
    return JSONResponse({"reset": True})


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
]
