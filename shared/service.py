"""The shell every service process runs in: a Starlette app under uvicorn whose lifespan opens the connections, builds
the service's typed runtime, and starts what the service declared (consumers, request/reply endpoints, loops).

Start-up: settings → JSON logs → pool → migrations → NATS topology → NATS connection → runtime → consumers,
endpoints, loops. Shutdown (SIGTERM / Ctrl-C, handled by uvicorn): stop taking requests and messages, let the ones
in hand finish (`GRACEFUL_TIMEOUT`), stop the loops, drain NATS, close the pool, exit 0.

Every service serves `/healthz` (the process answers), `/readyz` (NATS and PostgreSQL reachable) and `/metrics`.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import nats
import uvicorn
from nats.aio.client import Client
from prometheus_client import REGISTRY, make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from shared import topology
from shared.db import create_pool
from shared.db.migrate import migrate
from shared.messaging.consume import Consumer, Running
from shared.messaging.rpc import Endpoint, RpcServer
from shared.retry import backoff
from shared.runtime import Connections, Runtime
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

STARTUP_RETRY_SECONDS = 60.0  # how long to wait for NATS / PostgreSQL to come up before giving up
# Time the messages and requests in hand get to finish at shutdown: inside make run's 10 s Ctrl-C budget and
# docker's default 10 s.
GRACEFUL_TIMEOUT = 8.0
POOL_SIZE = 10  # PostgreSQL connections for endpoints and loops; each consumer adds its concurrency
R = TypeVar("R", bound=Runtime[Any])


@dataclass(frozen=True)
class Service(Generic[R]):
    """What one service is made of. `app.py` fills this in; the shell runs it."""

    name: str
    settings: ServiceSettings
    build: Callable[[Connections], Awaitable[R]]
    consumers: Sequence[Consumer[Any, R]] = ()
    endpoints: Sequence[Endpoint[Any, R]] = ()
    loops: Sequence[Callable[[R], Awaitable[None]]] = ()
    routes: Sequence[BaseRoute] = ()
    close: Callable[[R], Awaitable[None]] | None = None


async def connect_nats(name: str, nats_url: str, stopping: asyncio.Event) -> Client:
    """A connection that reconnects forever, and ends the process if it is ever closed for good: the supervisor
    restarts a process, while a closed connection would leave it up and useless (docs/nats.md §10)."""

    async def closed() -> None:
        if not stopping.is_set():
            log.critical("nats.connection_closed", extra={"action": "exit"})
            logging.shutdown()
            os._exit(70)

    async def disconnected() -> None:
        if not stopping.is_set():
            log.warning("nats.disconnected")

    async def reconnected() -> None:
        log.info("nats.reconnected")

    return await nats.connect(topology.servers(nats_url), name=name, max_reconnect_attempts=-1,
                              reconnect_time_wait=1, connect_timeout=3, ping_interval=20, max_outstanding_pings=3,
                              closed_cb=closed, disconnected_cb=disconnected, reconnected_cb=reconnected)


async def _retry(what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Dependencies may still be starting (docker compose, make run): retry with backoff for a while."""
    deadline = asyncio.get_running_loop().time() + STARTUP_RETRY_SECONDS
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except Exception as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"{what} unreachable after {STARTUP_RETRY_SECONDS:.0f}s: {exc}") from exc
            log.warning("startup.waiting", extra={"dependency": what, "error": str(exc)[:200]})
            await asyncio.sleep(backoff(attempt, base=0.2, cap=3.0))


async def readiness(rt: Runtime[Any]) -> tuple[bool, dict[str, str]]:
    checks: dict[str, str] = {}
    try:
        if rt.nc.is_connected:
            await rt.nc.jetstream(timeout=1.0).stream_info(topology.POLAR_WEBHOOKS.name)
            checks["nats"] = "ok"
        else:
            checks["nats"] = "disconnected"
    except Exception as exc:  # noqa: BLE001 - any failure is "not ready", reported by kind only
        checks["nats"] = f"error: {type(exc).__name__}"
    try:
        async with asyncio.timeout(1.0):
            await rt.pool.fetchval("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["postgres"] = f"error: {type(exc).__name__}"
    return all(v == "ok" for v in checks.values()), checks


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "service": request.app.state.service_name})


async def readyz(request: Request) -> JSONResponse:
    rt: Runtime[Any] | None = request.app.state.rt
    if rt is None or rt.stopping.is_set():
        return JSONResponse({"ready": False, "checks": {"service": "starting" if rt is None else "stopping"}},
                            status_code=503)
    ok, checks = await readiness(rt)
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


async def run_loop(loop: Callable[[R], Awaitable[None]], rt: R) -> None:
    await loop(rt)


def service_app(service: Service[R]) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        s = service.settings
        stopping = asyncio.Event()
        # Handlers in flight hold a connection each: room for them on top of what endpoints and loops use.
        pool_size = POOL_SIZE + sum(c.concurrency for c in service.consumers)
        pool = await _retry("postgres", lambda: create_pool(s.database_url, max_size=pool_size, name=service.name))
        async with pool.acquire() as conn:
            await migrate(conn)
        await _retry("nats", lambda: topology.apply(s.nats_url, s.nats_stream_replicas))
        nc: Client = await _retry("nats", lambda: connect_nats(service.name, s.nats_url, stopping))
        rt = await service.build(Connections(name=service.name, nc=nc, js=nc.jetstream(timeout=10), pool=pool,
                                             stopping=stopping))
        app.state.rt = rt
        consumers = [Running(c, rt) for c in service.consumers]
        for running in consumers:
            running.start()
        rpc = RpcServer(nc, service.endpoints, rt, queue=topology.RPC_QUEUE)
        await rpc.start()
        loops = [asyncio.create_task(run_loop(loop, rt)) for loop in service.loops]
        # Everything built so far lives as long as the process: keep it out of the collector's scans, which
        # otherwise walk it on every full collection (measured on ingress: bench/ingress.py).
        gc.collect()
        gc.freeze()
        log.info("service.started", extra={"pid": os.getpid()})
        try:
            yield
        finally:
            stopping.set()
            await rpc.stop(timeout=GRACEFUL_TIMEOUT)
            await asyncio.gather(*(c.stop(timeout=GRACEFUL_TIMEOUT) for c in consumers))
            for task in loops:  # a loop's step in hand is a transaction: cancelled, it rolls back and runs again
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            if service.close is not None:
                await service.close(rt)
            try:
                async with asyncio.timeout(GRACEFUL_TIMEOUT / 2):
                    await nc.drain()
            except Exception:  # noqa: BLE001 - closing anyway
                await nc.close()
            await pool.close()
            log.info("service.stopped")

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Mount("/metrics", make_asgi_app(REGISTRY)),
            *service.routes,
        ],
        lifespan=lifespan,
    )
    app.state.rt = None
    app.state.service_name = service.name
    return app


def _listen(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def serve(app: Starlette, host: str, port: int, *, reuse_port: bool = False, own_port: int | None = None) -> None:
    """Run under uvicorn, which turns SIGTERM / SIGINT into a clean lifespan shutdown and exit code 0.

    `reuse_port`: other processes of this service listen on `port` too (SO_REUSEPORT; the kernel spreads new
    connections over them, and a dead one's share goes to the rest). `own_port`: this process alone, for its
    health and metrics."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # our JSON handler on the root logger
        lifespan="on",
        timeout_graceful_shutdown=int(GRACEFUL_TIMEOUT),
        access_log=False,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it caught once shutdown is done, which would end us with -15 instead of 0.
    # With these handlers in place the re-raise is a no-op and the clean shutdown exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    if reuse_port or own_port:
        try:
            sockets = [_listen(host, port, reuse_port=reuse_port)]
            if own_port:
                sockets.append(_listen(host, own_port, reuse_port=False))
        except OSError as exc:
            log.critical("service.cannot_listen", extra={"error": str(exc)})
            raise SystemExit(3) from None
        server.run(sockets=sockets)
    else:
        server.run()
    if not server.started:
        raise SystemExit(3)


S = TypeVar("S", bound=ServiceSettings)


def main(service: str, settings_cls: type[S], build_app: Callable[[S], Starlette], port_field: str) -> None:
    """A service's entry point: settings (or one clear error line and exit 2), JSON logs, then serve until signalled."""
    from shared.logs import setup_logging
    from shared.settings import load_settings

    settings = load_settings(settings_cls, service)
    setup_logging(service, settings.log_level)
    serve(build_app(settings), settings.http_host, getattr(settings, port_field), reuse_port=settings.http_reuse_port,
          own_port=settings.instance_http_port)
