"""The chat service's API over HTTPS, for runtimes that have `fetch` but no TCP socket (Convex actions, Vercel Edge,
Cloudflare Workers): the same contracts as NATS (polar_billing_client.contracts), the same answers.

    POST /v1/usage            one UsageEvent, or {"events": [...]} (up to 500): 200 after JetStream stored each
    POST /v1/check | /v1/reserve | /v1/release | /v1/checkout | /v1/portal
    GET  /v1/status/{user_id} (the id percent-encoded)
    GET  /v1/openapi.json

Authenticated by `Authorization: Bearer <key>` against CHAT_API_KEYS (constant-time compare; keys are never logged).
Every error is `{"error": {"code", "message", "field"?, "retry_after"?}}` with an HTTP status that matches it.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from polar_billing_client.client import BillingClient, BillingError, BillingUnavailable
from polar_billing_client.contracts import (
    CheckoutRequest,
    CheckReply,
    CheckRequest,
    ErrorBody,
    ErrorReply,
    LinkReply,
    PortalRequest,
    ReleaseReply,
    ReleaseRequest,
    ReserveReply,
    ReserveRequest,
    StatusReply,
    UsageEvent,
    UsageQuery,
    UsageReport,
)
from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.messaging.rpc import invalid_request

from .runtime import IngressRuntime

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
MAX_EVENTS = 500
# Billing's error codes → HTTP statuses (anything else: 500).
STATUS = {"invalid_request": 400, "unknown_plan": 400, "plan_not_available": 400, "no_customer": 404,
          "not_found": 404, "polar_rejected": 422, "polar_rate_limited": 429, "polar_unavailable": 502,
          "polar_not_configured": 503, "unavailable": 503, "not_configured": 503, "unauthorized": 401,
          "too_large": 413, "internal": 500}


class UsageBatch(BaseModel):
    events: list[UsageEvent] = Field(min_length=1, max_length=MAX_EVENTS)


class UsageStored(BaseModel):
    stored: int  # newly stored
    duplicates: int  # already stored (a retry): counted once


def error(code: str, message: str, *, field: str | None = None, retry_after: int | None = None) -> JSONResponse:
    body = ErrorReply(error=ErrorBody(code=code, message=message, field=field, retry_after=retry_after))
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return JSONResponse(body.model_dump(exclude_none=True), status_code=STATUS.get(code, 500), headers=headers)


def _invalid(exc: ValidationError) -> JSONResponse:
    body = invalid_request(exc, not_json="the body is not JSON").body  # the same answer billing.rpc.* gives
    return error(body.code, body.message, field=body.field)


def _authorized(rt: IngressRuntime, request: Request) -> JSONResponse | None:
    keys = rt.settings.api_keys()
    if not keys:
        return error("not_configured", "the HTTP API is not configured (CHAT_API_KEYS is unset)")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Every key is compared, each in constant time: neither the match nor its position shows in the timing.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given.strip().encode(), key)
    if scheme.lower() != "bearer" or not ok:
        return error("unauthorized", "a valid `Authorization: Bearer <key>` is required")
    return None


async def _body(request: Request) -> bytes | JSONResponse:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        return error("too_large", f"the body is over {MAX_BODY} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return error("too_large", f"the body is over {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def endpoint(fn: Callable[[Request, IngressRuntime, bytes], Awaitable[Response]]
             ) -> Callable[[Request], Awaitable[Response]]:
    """Authentication, the body limit, and billing's failures as answers: what every /v1 route shares."""

    async def handle(request: Request) -> Response:
        rt: IngressRuntime = request.app.state.rt
        refused = _authorized(rt, request)
        if refused is not None:
            return refused
        body = await _body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            return await fn(request, rt, body)
        except BillingError as exc:
            return error(exc.code, exc.message, field=exc.field, retry_after=exc.retry_after)
        except BillingUnavailable:
            return error("unavailable", "billing did not answer in time; retry", retry_after=1)

    return handle


def _reply(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


@endpoint
async def usage(request: Request, rt: IngressRuntime, body: bytes) -> Response:
    try:
        raw = json.loads(body or b"null")
    except ValueError:
        return error("invalid_request", "the body is not JSON")
    try:
        if isinstance(raw, dict) and "events" in raw:
            events = UsageBatch.model_validate(raw).events
        else:
            events = [UsageEvent.model_validate(raw)]
    except ValidationError as exc:
        return _invalid(exc)
    try:
        # All at once; each with its event id as Nats-Msg-Id, so a retried batch is stored once.
        acks = await asyncio.gather(*(rt.billing.publish_usage(e) for e in events))
    except Exception as exc:  # noqa: BLE001 - NATS away or slow: nothing is lost, the caller retries the batch
        log.warning("chat_api.usage_unavailable", extra={"events": len(events), "error": type(exc).__name__})
        return error("unavailable", "usage could not be stored just now; retry with the same event ids",
                     retry_after=1)
    duplicates = sum(1 for a in acks if a.duplicate)
    return _reply(UsageStored(stored=len(acks) - duplicates, duplicates=duplicates))


def _parse(model: type[BaseModel], body: bytes) -> Any:
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        return _invalid(exc)


async def _ask(body: bytes, model: type[BaseModel], call: Callable[[Any, BillingClient], Awaitable[BaseModel]],
               rt: IngressRuntime) -> Response:
    req = _parse(model, body)
    if isinstance(req, Response):
        return req
    return _reply(await call(req, rt.billing))


@endpoint
async def check(request: Request, rt: IngressRuntime, body: bytes) -> Response:
    return await _ask(body, CheckRequest, lambda r, c: c.check(**r.model_dump(), on_unavailable="raise"), rt)


@endpoint
async def reserve(request: Request, rt: IngressRuntime, body: bytes) -> Response:
    return await _ask(body, ReserveRequest, lambda r, c: c.reserve(**r.model_dump(), on_unavailable="raise"), rt)


async def _release(req: ReleaseRequest, client: BillingClient) -> ReleaseReply:
    return ReleaseReply(released=await client.release(req.reservation_id))


@endpoint
async def release(request: Request, rt: IngressRuntime, body: bytes) -> Response:
    return await _ask(body, ReleaseRequest, _release, rt)


@endpoint
async def status(request: Request, rt: IngressRuntime, body: bytes) -> Response:
    user_id = request.path_params["user_id"]
    if not 1 <= len(user_id) <= 256:
        return error("invalid_request", "user_id: must be 1 to 256 characters", field="user_id")
    return _reply(await rt.billing.status(user_id))


@endpoint
async def usage_report(request: Request, rt: IngressRuntime, body: bytes) -> Response:
    q = request.query_params
    raw: dict[str, Any] = {"user_id": request.path_params["user_id"]}
    for key in ("from", "to", "limit"):
        if q.get(key):
            raw[key] = q[key]
    if q.get("group_by"):
        raw["group_by"] = [g.strip() for g in q["group_by"].split(",") if g.strip()]
    try:
        query = UsageQuery.model_validate(raw)
    except ValidationError as exc:
        return _invalid(exc)
    return _reply(await rt.billing.usage(query.user_id, from_=query.from_, to=query.to, group_by=query.group_by,
                                         limit=query.limit))


@endpoint
async def checkout(request: Request, rt: IngressRuntime, body: bytes) -> Response:
    return await _ask(body, CheckoutRequest, lambda r, c: c.checkout_url(**r.model_dump()), rt)


@endpoint
async def portal(request: Request, rt: IngressRuntime, body: bytes) -> Response:
    # The reply's URL holds a bearer token: it goes to the caller only, never to a log line.
    return await _ask(body, PortalRequest, lambda r, c: c.portal_url(**r.model_dump()), rt)


# --- the OpenAPI document: built from the same contracts, served, and committed as docs/openapi.json ---------------
OPERATIONS: list[tuple[str, str, str, type[BaseModel] | None, type[BaseModel], str]] = [
    # (method, path, operation id, request, reply, summary)
    ("post", "/v1/usage", "trackUsage", UsageEvent, UsageStored,
     ("One usage event, or {\"events\": [...]} (up to 500). Answered after JetStream stored each; a repeated "
     "event_id is stored once.")),
    ("post", "/v1/check", "check", CheckRequest, CheckReply, "May the user have one more AI response?"),
    ("post", "/v1/reserve", "reserve", ReserveRequest, ReserveReply, "Check and hold an estimate, atomically."),
    ("post", "/v1/release", "release", ReleaseRequest, ReleaseReply, "Release a reservation that will not be used."),
    ("get", "/v1/status/{user_id}", "status", None, StatusReply, "Plan, subscription, limits and credits."),
    ("get", "/v1/usage/{user_id}", "usage", None, UsageReport,
     ("Where the user's tokens went and what they cost: ?from=YYYY-MM-DD&to=YYYY-MM-DD (UTC days, to excluded; "
     "default: the current billing period)&group_by=day,model|thread (up to two)&limit=N (top N, rest as other).")),
    ("post", "/v1/checkout", "checkout", CheckoutRequest, LinkReply, "A Polar checkout link for a plan."),
    ("post", "/v1/portal", "portal", PortalRequest, LinkReply,
     "A Polar customer-portal link (it holds a bearer token: redirect to it, never log it)."),
]


def openapi() -> dict[str, Any]:
    models: set[type[BaseModel]] = {m for op in OPERATIONS for m in (op[3], op[4]) if m is not None}
    extra: list[type[BaseModel]] = [UsageBatch, ErrorReply]
    ordered = sorted(models | set(extra), key=lambda m: m.__name__)
    inputs: list[tuple[type[BaseModel], Literal["validation"]]] = [(m, "validation") for m in ordered]
    _, defs = models_json_schema(inputs, ref_template="#/components/schemas/{model}")
    ref = "#/components/schemas/{}".format
    errors = {str(code): {"description": ", ".join(sorted(c for c, s in STATUS.items() if s == code)),
                          "content": {"application/json": {"schema": {"$ref": ref("ErrorReply")}}}}
              for code in sorted(set(STATUS.values()))}
    paths: dict[str, Any] = {}
    for method, path, op_id, request, reply, summary in OPERATIONS:
        op: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": {
            "200": {"description": reply.__name__,
                    "content": {"application/json": {"schema": {"$ref": ref(reply.__name__)}}}}, **errors}}
        if request is UsageEvent:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                {"$ref": ref("UsageEvent")}, {"$ref": ref("UsageBatch")}]}}}}
        elif request is not None:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": {"$ref": ref(request.__name__)}}}}
        else:
            op["parameters"] = [{"name": "user_id", "in": "path", "required": True,
                                 "description": "the user id, percent-encoded", "schema": {"type": "string"}}]
            if op_id == "usage":
                op["parameters"] += [
                    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date"}},
                    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"}},
                    {"name": "group_by", "in": "query", "description": "comma-separated: day, model, thread",
                     "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}}]
        paths[path] = {method: op}
    return {"openapi": "3.1.0",
            "info": {"title": "Polar billing backend: the chat service's API", "version": "1",
                     "description": "The NATS API (docs/asyncapi.yaml) over HTTPS, for runtimes without sockets."},
            "components": {"schemas": defs["$defs"],
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}], "paths": paths}


DOCUMENT = json.dumps(openapi(), indent=2, sort_keys=False) + "\n"


async def openapi_json(request: Request) -> Response:
    return Response(DOCUMENT, media_type="application/json")


ROUTES = [
    Route("/v1/openapi.json", openapi_json, methods=["GET"]),
    Route("/v1/usage", usage, methods=["POST"]),
    Route("/v1/check", check, methods=["POST"]),
    Route("/v1/reserve", reserve, methods=["POST"]),
    Route("/v1/release", release, methods=["POST"]),
    Route("/v1/status/{user_id:path}", status, methods=["GET"]),
    Route("/v1/usage/{user_id:path}", usage_report, methods=["GET"]),
    Route("/v1/checkout", checkout, methods=["POST"]),
    Route("/v1/portal", portal, methods=["POST"]),
]
