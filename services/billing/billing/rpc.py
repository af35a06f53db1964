"""billing.rpc.*: the chat service's questions, answered over core NATS request/reply.

Every request is parsed once, at the edge, into its contract; every answer is a reply contract or
`{"error": {"code", "message", ...}}`. A handler never raises to the broker: a raise would leave the caller waiting
for its timeout (faststream-nats.md §1.6).
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from nats.aio.msg import Msg
from polar import PolarNetworkError, PolarServerError
from polar.base import PolarRateLimitError
from polar.v2026_10 import PolarAsync
from polar.v2026_10 import errors as polar_errors
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ValidationError

from shared.contracts import (CheckoutRequest, CheckRequest, Credits, ErrorBody, ErrorReply, LinkReply, PortalRequest,
                              ReleaseReply, ReleaseRequest, ReserveReply, ReserveRequest, StatusReply, StatusRequest)
from shared import topology
from shared.plans import LimitName, PlanCatalog
from shared.service import Runtime

from . import repository as repo
from .limits import UserState, evaluate

log = logging.getLogger(__name__)

CALLS = Counter("billing_rpc_total", "RPC requests, by verb and outcome", ["verb", "outcome"])
SECONDS = Histogram("billing_rpc_seconds", "RPC handling time", ["verb"],
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2, 10))
POLAR_ATTEMPTS = 3
T = TypeVar("T", bound=BaseModel)


class RpcError(Exception):
    def __init__(self, code: str, message: str, *, field: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.body = ErrorBody(code=code, message=message, field=field, retry_after=retry_after)


def parse(model: type[T], body: bytes) -> T:
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        if err["type"] == "json_invalid":
            raise RpcError("invalid_request", "the request is not JSON") from None
        field = ".".join(str(p) for p in err["loc"]) or None
        raise RpcError("invalid_request", f"{field}: {err['msg']}" if field else err["msg"], field=field) from None


def now_of(rt: Runtime) -> datetime:
    return rt.extra.get("clock", lambda: datetime.now(timezone.utc))()


async def answer(verb: str, rt: Runtime, body: bytes, handler: Callable[[Runtime, bytes], Awaitable[BaseModel]]
                 ) -> bytes:
    t0 = asyncio.get_running_loop().time()
    try:
        reply = await handler(rt, body)
        outcome = "ok"
    except RpcError as exc:
        reply, outcome = ErrorReply(error=exc.body), exc.body.code
    except Exception:  # noqa: BLE001 - the caller gets an answer, the operator gets the traceback
        log.exception("rpc.failed", extra={"verb": verb})
        reply, outcome = ErrorReply(error=ErrorBody(code="internal", message="internal error; retry")), "internal"
    CALLS.labels(verb, outcome).inc()
    SECONDS.labels(verb).observe(asyncio.get_running_loop().time() - t0)
    return reply.model_dump_json(exclude_none=isinstance(reply, ErrorReply)).encode()


class RpcServer:
    """The billing.rpc.* subjects, served with nats-py subscriptions on the broker's connection (a queue group, so
    several billing processes share the load). Not FastStream subscribers: on this hot path its per-message stack
    cost ~0.6 ms, more than the database read (bench/check_latency.py). Each request runs in its own task so
    concurrent callers overlap on the pool; stop() lets the requests in hand finish."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.subs: list[Any] = []
        self.inflight: set[asyncio.Task] = set()

    async def start(self) -> None:
        nc = self.rt.broker.connection
        for verb, fn in VERBS.items():
            self.subs.append(await nc.subscribe(topology.rpc_subject(verb), queue=topology.RPC_QUEUE,
                                                cb=self._callback(verb, fn)))

    def _callback(self, verb: str, fn: Handler) -> Callable[[Msg], Awaitable[None]]:
        async def respond(msg: Msg) -> None:
            reply = await answer(verb, self.rt, msg.data, fn)
            if msg.reply:
                await msg.respond(reply)

        async def on_message(msg: Msg) -> None:
            task = asyncio.create_task(respond(msg))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)

        return on_message

    async def stop(self, timeout: float) -> None:
        for sub in self.subs:
            await sub.unsubscribe()
        if self.inflight:
            await asyncio.wait(self.inflight, timeout=timeout)


# --- limits ---------------------------------------------------------------------------------------------------
async def check(rt: Runtime, body: bytes) -> BaseModel:
    req = parse(CheckRequest, body)
    assert rt.pool is not None
    now = now_of(rt)
    async with rt.pool.acquire() as conn:
        state = UserState.from_row(await repo.user_state(conn, req.user_id, now, req.thread_id))
    return evaluate(state, req, rt.extra["catalog"], now).reply


async def reserve(rt: Runtime, body: bytes) -> BaseModel:
    """Check and hold, atomically: the user's lock serializes reserves, so N at once never over-admit."""
    req = parse(ReserveRequest, body)
    assert rt.pool is not None
    now = now_of(rt)
    async with rt.pool.acquire() as conn, conn.transaction():
        await repo.lock_user(conn, req.user_id)
        state = UserState.from_row(await repo.user_state(conn, req.user_id, now, req.thread_id))
        ev = evaluate(state, req, rt.extra["catalog"], now)
        reply = ReserveReply(**ev.reply.model_dump())
        if ev.reply.allowed:
            reply.reservation_id = f"rsv_{uuid.uuid4().hex}"
            await repo.insert_reservation(conn, reply.reservation_id, req.user_id, req.thread_id, ev.new_thread,
                                          req.estimated_tokens, ev.period[0], now + timedelta(seconds=req.ttl_seconds))
    return reply


async def release(rt: Runtime, body: bytes) -> BaseModel:
    req = parse(ReleaseRequest, body)
    assert rt.pool is not None
    async with rt.pool.acquire() as conn:
        return ReleaseReply(released=await repo.release_reservation(conn, req.reservation_id))


async def status(rt: Runtime, body: bytes) -> BaseModel:
    req = parse(StatusRequest, body)
    assert rt.pool is not None
    now = now_of(rt)
    async with rt.pool.acquire() as conn:
        state = UserState.from_row(await repo.user_state(conn, req.user_id, now, None))
        customer_id = await repo.customer_id_of(conn, req.user_id)
        granted = await repo.credits_granted(conn, req.user_id)
    ev = evaluate(state, CheckRequest(user_id=req.user_id), rt.extra["catalog"], now)
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


# --- links through Polar --------------------------------------------------------------------------------------
def polar_of(rt: Runtime) -> PolarAsync:
    polar = rt.extra.get("polar")
    if polar is None:
        raise RpcError("polar_not_configured", "Polar is not configured (POLAR_ACCESS_TOKEN is unset)")
    return polar


async def call_polar(what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Bounded retries for Polar's transient failures; a 429 is answered at once with its Retry-After."""
    for attempt in range(1, POLAR_ATTEMPTS + 1):
        try:
            return await fn()
        except PolarRateLimitError as exc:
            raise RpcError("polar_rate_limited", "Polar is rate limiting us; retry later",
                           retry_after=exc.retry_after) from None
        except (PolarServerError, PolarNetworkError) as exc:
            log.warning("polar.call_failed", extra={"call": what, "attempt": attempt, "error": type(exc).__name__})
            if attempt == POLAR_ATTEMPTS:
                raise RpcError("polar_unavailable", f"Polar did not answer {what} after {attempt} attempts") from None
            await asyncio.sleep(0.2 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


async def checkout(rt: Runtime, body: bytes) -> BaseModel:
    req = parse(CheckoutRequest, body)
    catalog: PlanCatalog = rt.extra["catalog"]
    if req.plan not in ("pro", "team"):
        raise RpcError("unknown_plan", f"plan must be pro or team, not {req.plan!r}"[:200], field="plan")
    product_id = catalog.product_id(req.plan)
    if product_id is None:
        raise RpcError("plan_not_available", f"no Polar product is configured for {req.plan}", field="plan")
    polar = polar_of(rt)
    base = rt.settings.public_base_url.rstrip("/")  # type: ignore[attr-defined]
    try:
        c = await call_polar("checkouts.create", lambda: polar.checkouts.create(
            products=[product_id], external_customer_id=req.user_id,
            success_url=req.success_url or f"{base}/subscription/success?checkout_id={{CHECKOUT_ID}}",
            return_url=req.return_url or f"{base}/subscription/cancel",
            metadata={"user_id": req.user_id, "plan": req.plan}))
    except polar_errors.HTTPValidationError as exc:
        raise RpcError("polar_rejected", _polar_detail(exc)) from None
    log.info("checkout.created", extra={"user_id": req.user_id, "plan": req.plan, "checkout_id": c.id})
    return LinkReply(url=c.url, expires_at=c.expires_at, checkout_id=c.id)


async def portal(rt: Runtime, body: bytes) -> BaseModel:
    req = parse(PortalRequest, body)
    polar = polar_of(rt)
    kwargs: dict[str, Any] = {"external_customer_id": req.user_id}
    if req.return_url:
        kwargs["return_url"] = req.return_url
    try:
        s = await call_polar("customer_sessions.create", lambda: polar.customer_sessions.create(**kwargs))
    except polar_errors.HTTPValidationError as exc:
        detail = _polar_detail(exc)
        if "does not exist" in detail:
            raise RpcError("no_customer", "Polar has no customer for this user yet (no purchase)") from None
        raise RpcError("polar_rejected", detail) from None
    # The URL carries a bearer token: it goes to the caller only, never to a log line or a row.
    log.info("portal.session_created", extra={"user_id": req.user_id})
    return LinkReply(url=s.customer_portal_url, expires_at=s.expires_at)


def _polar_detail(exc: polar_errors.HTTPValidationError) -> str:
    detail = (exc.error.detail if exc.error else None) or []
    return "; ".join(f"{'.'.join(str(p) for p in d.loc)}: {d.msg}" for d in detail)[:500] or "refused by Polar"


Handler = Callable[[Runtime, bytes], Awaitable[BaseModel]]
VERBS: dict[str, Handler] = {
    "check": check, "reserve": reserve, "release": release, "status": status, "checkout": checkout, "portal": portal,
}
