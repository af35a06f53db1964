"""The shell every service process runs in: a Starlette app under uvicorn whose lifespan owns the broker and the pool.

Start-up: settings → JSON logs → pool → migrations → NATS topology → broker (subscribers bind to existing durables).
Shutdown (SIGTERM / Ctrl-C, handled by uvicorn): stop taking messages, let the one in hand finish
(`graceful_timeout`), drain NATS, close the pool, exit 0.

Every service serves `/healthz` (the process answers), `/readyz` (NATS and PostgreSQL reachable) and `/metrics`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import uvicorn
from faststream.nats import NatsBroker
from faststream.nats.prometheus import NatsPrometheusMiddleware
from prometheus_client import REGISTRY, make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from shared import topology
from shared.db import create_pool
from shared.db.migrate import migrate
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

STARTUP_RETRY_SECONDS = 60.0  # how long to wait for NATS / PostgreSQL to come up before giving up
# Time a message in hand gets to finish at shutdown: inside make run's 10 s Ctrl-C budget and docker's default 10 s.
GRACEFUL_TIMEOUT = 8.0


@dataclass
class Runtime:
    """What a running service holds. Handlers and routes reach it through `app.state.rt`."""

    name: str
    settings: ServiceSettings
    broker: NatsBroker
    pool: asyncpg.Pool | None = None
    stopping: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def make_broker(name: str, nats_url: str, state: dict[str, bool], **kwargs: Any) -> NatsBroker:
    """A broker that reconnects forever and exits the process if its connection is ever closed for good.

    After nats-py gives up reconnecting, FastStream's pull loops spin at 100 % CPU with the event loop blocked
    (faststream-nats.md §2); an exit lets the supervisor restart us instead.
    """

    async def _closed() -> None:
        if not state.get("stopping"):
            log.critical("nats.connection_closed", extra={"action": "exit"})
            logging.shutdown()
            os._exit(70)

    return NatsBroker(
        [u.strip() for u in nats_url.split(",")],
        name=name,
        graceful_timeout=GRACEFUL_TIMEOUT,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=3,
        ping_interval=20,
        max_outstanding_pings=3,
        closed_cb=_closed,
        # FastStream's service lines go through our JSON handler; its per-message lines only at DEBUG.
        logger=logging.getLogger(f"faststream.{name}"),
        log_level=logging.DEBUG,
        middlewares=[NatsPrometheusMiddleware(registry=REGISTRY, app_name=name)],
        **kwargs,
    )


async def _retry(what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Dependencies may still be starting (docker compose, make run): retry with backoff for a while."""
    deadline = asyncio.get_running_loop().time() + STARTUP_RETRY_SECONDS
    delay = 0.2
    while True:
        try:
            return await fn()
        except Exception as exc:  # noqa: BLE001 - whatever the cause, the answer is to wait and retry
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"{what} unreachable after {STARTUP_RETRY_SECONDS:.0f}s: {exc}") from exc
            log.warning("startup.waiting", extra={"dependency": what, "error": str(exc)[:200]})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)


async def readiness(rt: Runtime) -> tuple[bool, dict[str, str]]:
    checks: dict[str, str] = {}
    try:
        ok = await rt.broker.ping(timeout=1.0)
        if ok:
            js = rt.broker.connection.jetstream(timeout=1.0)
            await js.stream_info(topology.POLAR_WEBHOOKS.name)
        checks["nats"] = "ok" if ok else "disconnected"
    except Exception as exc:  # noqa: BLE001 - any failure is "not ready", reported by kind only
        checks["nats"] = f"error: {type(exc).__name__}"
    try:
        assert rt.pool is not None
        async with asyncio.timeout(1.0):
            await rt.pool.fetchval("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["postgres"] = f"error: {type(exc).__name__}"
    return all(v == "ok" for v in checks.values()), checks


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "service": request.app.state.rt.name})


async def readyz(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.rt
    if rt.stopping:
        return JSONResponse({"ready": False, "checks": {"service": "stopping"}}, status_code=503)
    ok, checks = await readiness(rt)
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


Hook = Callable[[Runtime], Awaitable[None]]


def service_app(
    rt: Runtime,
    *,
    routes: Sequence[BaseRoute] = (),
    on_start: Sequence[Hook] = (),
    on_stop: Sequence[Hook] = (),
    migrate_db: bool = True,
) -> Starlette:
    """The Starlette app of one service. `on_start` runs after the broker started; `on_stop` before it stops."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        s = rt.settings
        rt.pool = await _retry("postgres", lambda: create_pool(s.database_url, name=rt.name))
        if migrate_db:
            async with rt.pool.acquire() as conn:
                await migrate(conn)
        await _retry("nats", lambda: topology.apply(s.nats_url))
        await rt.broker.start()
        for hook in on_start:
            await hook(rt)
        log.info("service.started", extra={"pid": os.getpid()})
        try:
            yield
        finally:
            rt.stopping = True
            rt.extra["broker_state"]["stopping"] = True
            for hook in on_stop:
                await hook(rt)
            await rt.broker.stop()  # waits up to graceful_timeout for the message in hand
            await rt.pool.close()
            log.info("service.stopped")

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Mount("/metrics", make_asgi_app(REGISTRY)),
            *routes,
        ],
        lifespan=lifespan,
    )
    app.state.rt = rt
    return app


def new_runtime(name: str, settings: ServiceSettings, **broker_kwargs: Any) -> Runtime:
    state = {"stopping": False}
    broker = make_broker(name, settings.nats_url, state, **broker_kwargs)
    return Runtime(name=name, settings=settings, broker=broker, extra={"broker_state": state})


def serve(app: Starlette, host: str, port: int) -> None:
    """Run under uvicorn, which turns SIGTERM / SIGINT into a clean lifespan shutdown and exit code 0."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # our JSON handler on the root logger
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_TIMEOUT,
        access_log=False,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it caught once shutdown is done, which would end us with -15 instead of 0.
    # With these handlers in place the re-raise is a no-op and the clean shutdown exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if not server.started:
        raise SystemExit(3)


def main(service: str, settings_cls: type[ServiceSettings], build_app: Callable[[Any], Starlette], port_field: str) -> None:
    """A service's entry point: settings (or one clear error line and exit 2), JSON logs, then serve until signalled."""
    from shared.logs import setup_logging
    from shared.settings import load_settings

    settings = load_settings(settings_cls, service)
    setup_logging(service, settings.log_level)
    serve(build_app(settings), settings.http_host, getattr(settings, port_field))
