"""Polar's endpoints (2026-10): paths, status codes, bodies and error shapes as Polar's server answers them.

Lists page and filter as query.py describes; the webhook endpoints live in webhooks_api.py."""
from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import ingest, query
from .scopes import scoped
from .spec import subscription_statuses
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


async def parse_body(request: Request, model: type[M], context: dict[str, Any] | None = None) -> M | JSONResponse:
    """The request body as `model`, or the 422 Polar's FastAPI server would give."""
    try:
        return model.model_validate(await json_body(request), context=context)
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


SUB_SORT_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "customer": lambda s: (s.get("customer") or {}).get("email"),
    "status": lambda s: s["status"],
    "started_at": lambda s: s.get("started_at"),
    "current_period_end": lambda s: s.get("current_period_end"),
    "ended_at": lambda s: s.get("ended_at"),
    "ends_at": lambda s: s.get("ends_at"),
    "amount": lambda s: s.get("amount"),
    "product": lambda s: (s.get("product") or {}).get("name"),
    "discount": lambda s: s.get("discount_id"),
}
# Polar's `Subscription.active` / `.revoked` hybrids: past_due, incomplete and paused are in neither.
ACTIVE, REVOKED = ("active", "trialing"), ("canceled", "unpaid")


async def subscriptions_list(request: Request) -> Response:
    """Every filter is an AND; repeated keys of one filter are an OR (Polar's `MultipleQueryFilter`)."""
    store = store_of(request)
    page, limit = query.pagination(request)
    customer_ids = query.uuids(request, "customer_id")
    external_ids = query.strings(request, "external_customer_id")
    product_ids = query.uuids(request, "product_id")
    statuses = query.one_of(request, "status", subscription_statuses())
    active = query.boolean(request, "active")
    cancel_at_period_end = query.boolean(request, "cancel_at_period_end")
    started_after, started_before = query.timestamp(request, "started_after"), query.timestamp(request, "started_before")
    subs = list(store.subscriptions.values())
    if customer_ids is not None:
        subs = [s for s in subs if s["customer_id"] in customer_ids]
    if external_ids is not None:
        owners = {store.customers[e]["id"] for e in external_ids if e in store.customers}
        subs = [s for s in subs if s["customer_id"] in owners]
    if product_ids is not None:
        subs = [s for s in subs if s["product_id"] in product_ids]
    if statuses is not None:
        subs = [s for s in subs if s["status"] in statuses]
    if active is not None:
        subs = [s for s in subs if s["status"] in (ACTIVE if active else REVOKED)]
    if cancel_at_period_end is not None:
        subs = [s for s in subs if bool(s.get("cancel_at_period_end")) == cancel_at_period_end]
    if started_after is not None:
        subs = [s for s in subs if s.get("started_at") and query.parse_time(s["started_at"]) > started_after]
    if started_before is not None:
        subs = [s for s in subs if s.get("started_at") and query.parse_time(s["started_at"]) < started_before]
    return query.page_of(query.sort(subs, request, SUB_SORT_KEYS, "-started_at"), page, limit)


async def subscription_get(request: Request) -> Response:
    query.path_uuid(request.path_params["id"])
    sub = store_of(request).subscriptions.get(request.path_params["id"])
    return JSONResponse(sub) if sub else not_found()


CUSTOMER_SORT_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "created_at": lambda c: c["created_at"],
    "email": lambda c: c.get("email"),
    "name": lambda c: c.get("name"),
}


async def customers_list(request: Request) -> Response:
    """`email` is exact (case-insensitive), `query` matches name, email or external id; `active` means at least one
    trialing, active or past_due subscription (the document's words). The 2026-10 document has no `external_id`
    filter: `query` or `GET /v1/customers/external/{id}` find one."""
    store = store_of(request)
    page, limit = query.pagination(request)
    email, text = request.query_params.get("email"), request.query_params.get("query")
    active = query.boolean(request, "active")
    customers = list(store.all_customers())
    if email is not None:
        customers = [c for c in customers if (c.get("email") or "").lower() == email.lower()]
    if text is not None:
        needle = text.lower()
        customers = [c for c in customers
                     if any(needle in (c.get(k) or "").lower() for k in ("name", "email", "external_id"))]
    if active is not None:
        billable = {s["customer_id"] for s in store.subscriptions.values()
                    if s["status"] in ("trialing", "active", "past_due")}
        customers = [c for c in customers if (c["id"] in billable) == active]
    return query.page_of(query.sort(customers, request, CUSTOMER_SORT_KEYS, "-created_at"), page, limit)


async def customer_get(request: Request) -> Response:
    query.path_uuid(request.path_params["id"])
    c = store_of(request).customer_by_id(request.path_params["id"])
    return JSONResponse(c) if c else not_found()


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
    page, limit = query.pagination(request)
    q = request.query_params
    customers = list(store.customers.values())
    if q.get("external_customer_id") is not None:
        customers = [c for c in customers if c["external_id"] == q["external_customer_id"]]
    if q.get("customer_id") is not None:
        customers = [c for c in customers if c["id"] == q["customer_id"]]
    if q.get("meter_id") not in (None, store.settings.tokens_meter_id):
        customers = []
    return query.page_of([store.customer_meter(c) for c in customers], page, limit)


ROUTES = [  # customers/external before customers/{id}; each route checks the scopes the document lists for it
    scoped("/v1/customer-meters/", customer_meters_list, "GET"),
    scoped("/v1/events/ingest", events_ingest, "POST"),
    scoped("/v1/checkouts/", checkouts_create, "POST"),
    scoped("/v1/customer-sessions/", customer_sessions_create, "POST"),
    scoped("/v1/customers/", customers_list, "GET"),
    scoped("/v1/customers/external/{external_id}", customer_external, "GET"),
    scoped("/v1/customers/external/{external_id}/state", customer_external_state, "GET"),
    scoped("/v1/customers/{id}", customer_get, "GET"),
    scoped("/v1/subscriptions/", subscriptions_list, "GET"),
    scoped("/v1/subscriptions/{id}", subscription_get, "GET"),
    scoped("/v1/meters/{meter_id}/quantities", meter_quantities, "GET"),
]
