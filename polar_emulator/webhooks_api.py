"""Polar's webhook management endpoints (2026-10) over the emulator's one endpoint (webhook_endpoints.py):
list/get/patch the endpoint, list deliveries, redeliver an event. Scopes `webhooks:read` / `webhooks:write`.

The endpoint exists (for the API) once it has a URL: EMULATOR_WEBHOOK_URL or the admin delivery config.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AnyUrl, BaseModel, BeforeValidator, UrlConstraints, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import query
from .api import not_found, parse_body, store_of, validation_error
from .delivery import Deliverer
from .scopes import scoped
from .spec import webhook_event_types
from .webhook_endpoints import Endpoint, delivery_to_polar, is_local_url


def deliverer_of(request: Request) -> Deliverer:
    return request.app.state.deliverer


def endpoint_of(request: Request) -> Endpoint | None:
    """The endpoint named by the path's `id`, if it exists (422 first if the id is not a UUID4, as FastAPI does)."""
    query.path_uuid(request.path_params["id"])
    ep = deliverer_of(request).endpoint
    return ep if ep.url is not None and ep.id == request.path_params["id"] else None


async def endpoints_list(request: Request) -> Response:
    page, limit = query.pagination(request)
    orgs = query.uuids(request, "organization_id")
    ep = deliverer_of(request).endpoint
    items = [ep.to_polar()] if ep.url is not None and (orgs is None or ep.organization_id in orgs) else []
    return query.page_of(items, page, limit)


async def endpoint_get(request: Request) -> Response:
    ep = endpoint_of(request)
    return JSONResponse(ep.to_polar()) if ep else not_found()


def _event_type(value: str) -> str:
    types = webhook_event_types()
    if value not in types:
        raise PydanticCustomError("enum", "Input should be {expected}",
                                  {"expected": ", ".join(f"'{t}'" for t in types[:-1]) + f" or '{types[-1]}'"})
    return value


class EndpointUpdate(BaseModel):
    """Polar's `WebhookEndpointUpdate`. With `webhook_reject_local_urls` (validation context `strict`) the URL must be
    https and not localhost, as Polar requires; without it any http(s) URL goes, so local receivers work."""

    url: Annotated[AnyUrl, UrlConstraints(max_length=2083, allowed_schemes=["http", "https"], host_required=True),
                   BeforeValidator(lambda v: v.strip() if isinstance(v, str) else v)] | None = None
    name: str | None = None
    format: Literal["raw", "discord", "slack"] | None = None
    events: list[Annotated[str, AfterValidator(_event_type)]] | None = None
    enabled: bool | None = None

    @field_validator("url")
    @classmethod
    def polar_url_rules(cls, v: AnyUrl | None, info: ValidationInfo) -> AnyUrl | None:
        if v is None or not (info.context or {}).get("strict"):
            return v
        if v.scheme != "https":
            raise PydanticCustomError("url_scheme", "URL scheme should be {expected_schemes}",
                                      {"expected_schemes": "'https'"})
        if is_local_url(str(v)):
            raise ValueError("Webhook URLs cannot point to localhost.")
        return v


async def endpoint_update(request: Request) -> Response:
    ep = endpoint_of(request)
    if ep is None:
        return not_found()
    strict = store_of(request).settings.webhook_reject_local_urls
    body = await parse_body(request, EndpointUpdate, context={"strict": strict})
    if isinstance(body, JSONResponse):
        return body
    # Polar checks the endpoint's *stored* URL when enabling: "update the URL first" (webhook/service.py).
    if strict and body.enabled is True and not ep.enabled and ep.url and is_local_url(ep.url):
        return validation_error([{"type": "value_error", "loc": ["body", "enabled"], "input": True,
                                  "msg": "Cannot enable a webhook endpoint with a localhost URL. "
                                         "Please update the URL first."}])
    changes: dict[str, Any] = body.model_dump(exclude_unset=True, exclude_none=True)
    if "url" in changes:
        changes["url"] = str(body.url)
    for key, value in changes.items():  # re-enabling resends nothing: skipped events stay skipped
        setattr(ep, key, value)
    ep.touch()
    return JSONResponse(ep.to_polar())


async def deliveries_list(request: Request) -> Response:
    """Every HTTP attempt, newest first, with the event as it is now."""
    page, limit = query.pagination(request)
    endpoint_ids = query.uuids(request, "endpoint_id")
    succeeded = query.boolean(request, "succeeded")
    start, end = query.timestamp(request, "start_timestamp"), query.timestamp(request, "end_timestamp")
    text = request.query_params.get("query")
    code_class = query.one_of(request, "http_code_class", ["2xx", "3xx", "4xx", "5xx"])
    types = query.one_of(request, "event_type", webhook_event_types())
    rows = [(d, e) for e in deliverer_of(request).events for d in e.deliveries]
    if endpoint_ids is not None:
        rows = [(d, e) for d, e in rows if e.endpoint_id in endpoint_ids]
    if succeeded is not None:
        rows = [(d, e) for d, e in rows if d.succeeded == succeeded]
    if start is not None:
        rows = [(d, e) for d, e in rows if query.parse_time(d.created_at) > start]
    if end is not None:
        rows = [(d, e) for d, e in rows if query.parse_time(d.created_at) < end]
    if text is not None:
        rows = [(d, e) for d, e in rows if any(text.lower() in v for v in (d.id, e.id, str(d.http_code)))]
    if code_class is not None:
        first = int(code_class[-1][0])
        rows = [(d, e) for d, e in rows if d.http_code is not None and d.http_code // 100 == first]
    if types is not None:
        rows = [(d, e) for d, e in rows if e.type in types]
    rows.sort(key=lambda r: r[0].created_at, reverse=True)
    return query.page_of([delivery_to_polar(d, e) for d, e in rows], page, limit)


async def event_redeliver(request: Request) -> Response:
    query.path_uuid(request.path_params["id"])
    d = deliverer_of(request)
    event = d.event(request.path_params["id"])
    if event is None:
        return not_found()
    d.redeliver(event)  # a disabled endpoint marks it skipped again instead of sending, as Polar's task does
    return Response("null", status_code=202, media_type="application/json")


ROUTES = [
    scoped("/v1/webhooks/endpoints", endpoints_list, "GET"),
    scoped("/v1/webhooks/endpoints/{id}", endpoint_get, "GET"),
    scoped("/v1/webhooks/endpoints/{id}", endpoint_update, "PATCH"),
    scoped("/v1/webhooks/deliveries", deliveries_list, "GET"),
    scoped("/v1/webhooks/events/{id}/redeliver", event_redeliver, "POST"),
]
