"""Polar's endpoints (2026-10): paths, status codes, bodies and error shapes as Polar's server answers them."""
from __future__ import annotations

import math
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import ingest
from .state import Store, iso

M = TypeVar("M", bound=BaseModel)


def store_of(request: Request) -> Store:
    return request.app.state.store


def not_found() -> JSONResponse:
    return JSONResponse({"error": "ResourceNotFound", "detail": "Not found"}, status_code=404)


def validation_error(details: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"detail": details}, status_code=422)


async def json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


async def parse_body(request: Request, model: type[M]) -> M | JSONResponse:
    """The request body as `model`, or the 422 Polar's FastAPI server would give."""
    try:
        return model.model_validate(await json_body(request))
    except ValidationError as exc:
        return validation_error([{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                                 for e in exc.errors(include_url=False)])


# --- events ---------------------------------------------------------------------------------------------------
async def events_ingest(request: Request) -> Response:
    store = store_of(request)
    body = await json_body(request)
    batch, details = ingest.validate(body)
    if batch is None:
        return validation_error(details)
    for i, event in enumerate(batch.events):  # rules set through the admin API reject like a server-side check
        for rule in store.ingest_rules:
            value = event.external_id if rule.key is None else event.metadata.get(rule.key)
            if value == rule.value:
                details.append({"loc": ["body", "events", i], "msg": f"Event rejected by rule {rule.key}={rule.value}",
                                "type": "value_error"})
    if details:
        return validation_error(details)
    inserted = duplicates = 0
    now = datetime.now(UTC)
    for event in batch.events:
        if event.external_id is not None:
            if event.external_id in store.event_keys:
                duplicates += 1
                continue
            store.event_keys.add(event.external_id)
        stored = event.model_dump(mode="json", exclude_none=True)
        stored["timestamp"] = (event.timestamp or now).isoformat()
        stored["id"] = str(uuid.uuid4())
        stored["ingested_at"] = now.isoformat()
        store.events.append(stored)
        inserted += 1
    store.batches.append({"at": now.isoformat(), "size": len(batch.events), "inserted": inserted,
                          "duplicates": duplicates})
    return JSONResponse({"inserted": inserted, "duplicates": duplicates})


# --- checkouts and customer sessions --------------------------------------------------------------------------
class CheckoutCreate(BaseModel):
    model_config = ConfigDict(extra="allow")
    products: list[str] = Field(min_length=1)
    external_customer_id: str | None = None
    success_url: str | None = None
    return_url: str | None = None
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)
    customer_email: str | None = None


async def checkouts_create(request: Request) -> Response:
    store = store_of(request)
    body = await parse_body(request, CheckoutCreate)
    if isinstance(body, JSONResponse):
        return body
    unknown = [i for i, p in enumerate(body.products) if not store.known_product(p)]
    if unknown:
        return validation_error([{"loc": ["body", "products", i], "msg": "Product does not exist.",
                                  "type": "value_error", "input": body.products[i]} for i in unknown])
    return JSONResponse(store.new_checkout(body.model_dump()), status_code=201)


class CustomerSessionCreate(BaseModel):
    model_config = ConfigDict(extra="allow")
    external_customer_id: str | None = None
    customer_id: str | None = None
    return_url: str | None = None


async def customer_sessions_create(request: Request) -> Response:
    store = store_of(request)
    body = await parse_body(request, CustomerSessionCreate)
    if isinstance(body, JSONResponse):
        return body
    if body.external_customer_id is not None:
        customer, loc = store.customers.get(body.external_customer_id), "external_customer_id"
    else:
        customer, loc = store.customer_by_id(body.customer_id or ""), "customer_id"
    if customer is None:
        return validation_error([{"loc": ["body", loc], "msg": "Customer does not exist.", "type": "value_error",
                                  "input": body.external_customer_id or body.customer_id}])
    now = datetime.now(UTC)
    token = f"polar_cst_{secrets.token_urlsafe(32)}"
    s = store.settings
    return JSONResponse({
        "created_at": iso(now), "modified_at": None, "id": str(uuid.uuid4()), "token": token,
        "expires_at": iso(now + timedelta(hours=1)), "return_url": body.return_url,
        "customer_portal_url": f"{s.frontend}/{s.organization_slug}/portal?customer_session_token={token}"
                               f"&email={customer['email']}",
        "customer_id": customer["id"], "customer": customer,
    }, status_code=201)


# --- customers and subscriptions ------------------------------------------------------------------------------
async def customer_external(request: Request) -> Response:
    c = store_of(request).customers.get(request.path_params["external_id"])
    return JSONResponse(c) if c else not_found()


async def customer_external_state(request: Request) -> Response:
    store = store_of(request)
    c = store.customers.get(request.path_params["external_id"])
    return JSONResponse(store.state(c)) if c else not_found()


def _page(request: Request) -> tuple[int, int] | JSONResponse:
    try:
        page, limit = int(request.query_params.get("page", 1)), int(request.query_params.get("limit", 10))
    except ValueError:
        page = limit = 0
    if page < 1 or not 1 <= limit <= 100:
        return validation_error([{"loc": ["query", "page" if page < 1 else "limit"],
                                  "msg": "Input should be a valid page", "type": "value_error"}])
    return page, limit


async def subscriptions_list(request: Request) -> Response:
    store = store_of(request)
    paging = _page(request)
    if isinstance(paging, JSONResponse):
        return paging
    page, limit = paging
    subs = sorted(store.subscriptions.values(), key=lambda s: s["created_at"], reverse=True)
    ext = request.query_params.get("external_customer_id")
    if ext is not None:
        c = store.customers.get(ext)
        subs = [s for s in subs if c and s["customer_id"] == c["id"]]
    active = request.query_params.get("active")
    if active is not None:
        want = active.lower() == "true"
        subs = [s for s in subs if (s["status"] in ("active", "trialing")) == want]
    items = subs[(page - 1) * limit: page * limit]
    return JSONResponse({"items": items, "pagination": {"total_count": len(subs),
                                                        "max_page": max(1, math.ceil(len(subs) / limit))}})


async def meter_quantities(request: Request) -> Response:
    store = store_of(request)
    if request.path_params["meter_id"] != store.settings.tokens_meter_id:
        return not_found()
    q = request.query_params
    try:
        start = datetime.fromisoformat(q["start_timestamp"])
        end = datetime.fromisoformat(q["end_timestamp"])
    except (KeyError, ValueError):
        return validation_error([{"loc": ["query", "start_timestamp"], "msg": "Field required", "type": "missing"}])
    total = store.consumed(q.get("external_customer_id"), start, end)
    return JSONResponse({"quantities": [{"timestamp": iso(start), "quantity": total}], "total": total})


async def customer_meters_list(request: Request) -> Response:
    store = store_of(request)
    paging = _page(request)
    if isinstance(paging, JSONResponse):
        return paging
    page, limit = paging
    q = request.query_params
    customers = list(store.customers.values())
    if q.get("external_customer_id") is not None:
        customers = [c for c in customers if c["external_id"] == q["external_customer_id"]]
    if q.get("customer_id") is not None:
        customers = [c for c in customers if c["id"] == q["customer_id"]]
    if q.get("meter_id") not in (None, store.settings.tokens_meter_id):
        customers = []
    items = [store.customer_meter(c) for c in customers]
    return JSONResponse({"items": items[(page - 1) * limit: page * limit],
                         "pagination": {"total_count": len(items), "max_page": max(1, math.ceil(len(items) / limit))}})


ROUTES = [
    Route("/v1/customer-meters/", customer_meters_list, methods=["GET"]),
    Route("/v1/events/ingest", events_ingest, methods=["POST"]),
    Route("/v1/checkouts/", checkouts_create, methods=["POST"]),
    Route("/v1/customer-sessions/", customer_sessions_create, methods=["POST"]),
    Route("/v1/customers/external/{external_id}", customer_external, methods=["GET"]),
    Route("/v1/customers/external/{external_id}/state", customer_external_state, methods=["GET"]),
    Route("/v1/subscriptions/", subscriptions_list, methods=["GET"]),
    Route("/v1/meters/{meter_id}/quantities", meter_quantities, methods=["GET"]),
]
