"""Request/reply endpoints on core NATS: `handler(request model, runtime) -> reply model`.

    @endpoint("check", CheckRequest)
    async def check(req: CheckRequest, rt: BillingRuntime) -> CheckReply: ...

The request is parsed here, at the edge; a bad one is answered `invalid_request` naming its field. A handler raises
`RpcError` for an answer the caller can act on; anything else is answered `internal` (and logged). Every request gets
an answer: a raise that reached the broker would leave the caller waiting out its timeout (docs/nats.md §8).

Served with nats-py subscriptions in a queue group, not FastStream subscribers: on this path FastStream's
per-message stack cost more than the database read (docs/messaging.md, bench/check_latency.py).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from polar_billing_client.contracts import ErrorBody, ErrorReply
from polar_billing_client.subjects import rpc_subject
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

CALLS = Counter("rpc_requests_total", "Requests answered, by verb and outcome", ["verb", "outcome"])
SECONDS = Histogram("rpc_seconds", "Time from request to answer", ["verb"],
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2, 10))

Req = TypeVar("Req", bound=BaseModel)
R = TypeVar("R")


class RpcError(Exception):
    """An answer the caller can act on: `{"error": {"code", "message", "field"?, "retry_after"?}}`."""

    def __init__(self, code: str, message: str, *, field: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.body = ErrorBody(code=code, message=message, field=field, retry_after=retry_after)


def invalid_request(exc: ValidationError, not_json: str = "the request is not JSON") -> RpcError:
    """A request that does not fit its contract, as the answer that names the field (also ingress's HTTP API)."""
    err = exc.errors(include_url=False, include_input=False)[0]
    if err["type"] == "json_invalid":
        return RpcError("invalid_request", not_json)
    field = ".".join(str(p) for p in err["loc"]) or None
    message = err["msg"].removeprefix("Value error, ")
    if field is None and ": " in message:  # a check across fields names its field first: "from: must be …"
        return RpcError("invalid_request", message, field=message.split(": ", 1)[0])
    return RpcError("invalid_request", f"{field}: {message}" if field else message, field=field)


def parse(model: type[Req], body: bytes) -> Req:
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise invalid_request(exc) from None


@dataclass(frozen=True)
class Endpoint(Generic[Req, R]):
    verb: str
    request: type[Req]
    handle: Callable[[Req, R], Awaitable[BaseModel]]

    async def answer(self, body: bytes, rt: R) -> bytes:
        t0 = time.perf_counter()
        reply: BaseModel
        try:
            reply = await self.handle(parse(self.request, body), rt)
            outcome = "ok"
        except RpcError as exc:
            reply, outcome = ErrorReply(error=exc.body), exc.body.code
        except Exception:
            log.exception("rpc.failed", extra={"verb": self.verb})
            reply, outcome = ErrorReply(error=ErrorBody(code="internal", message="internal error; retry")), "internal"
        CALLS.labels(self.verb, outcome).inc()
        SECONDS.labels(self.verb).observe(time.perf_counter() - t0)
        return reply.model_dump_json(exclude_none=isinstance(reply, ErrorReply)).encode()


def endpoint(verb: str, request: type[Req]) -> Callable[[Callable[[Req, R], Awaitable[BaseModel]]], Endpoint[Req, R]]:
    def declare(handle: Callable[[Req, R], Awaitable[BaseModel]]) -> Endpoint[Req, R]:
        return Endpoint(verb, request, handle)
    return declare


class RpcServer(Generic[R]):
    """The endpoints of one service, each a subscription in `queue` (several processes share the load). Each request
    runs in its own task so concurrent callers overlap on the pool; stop() lets the requests in hand finish."""

    def __init__(self, nc: Client, endpoints: Sequence[Endpoint[Any, R]], rt: R, *, queue: str) -> None:
        self.nc = nc
        self.endpoints = endpoints
        self.rt = rt
        self.queue = queue
        self.subs: list[Subscription] = []
        self.inflight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for ep in self.endpoints:
            self.subs.append(await self.nc.subscribe(rpc_subject(ep.verb), queue=self.queue, cb=self._callback(ep)))

    def _callback(self, ep: Endpoint[Any, R]) -> Callable[[Msg], Awaitable[None]]:
        async def respond(msg: Msg) -> None:
            reply = await ep.answer(msg.data, self.rt)
            if msg.reply:
                try:
                    await msg.respond(reply)
                except nats.errors.Error as exc:  # the connection is moving to another server: the caller retries
                    log.warning("rpc.reply_failed", extra={"verb": ep.verb, "error": type(exc).__name__})

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
