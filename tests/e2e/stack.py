"""Ingress + billing as processes on a database of their own, fed through the real webhook edge."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import nats

from shared import topology
from tests.e2e.procs import ServiceProcess, base_env, start_service
from tests.support.webhooks import PRO_PRODUCT, body_of, sign

SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLWUyZS13ZWJob29rcw=="


def stack_env(nats_url: str, database_url: str, **extra: str) -> dict[str, str]:
    return base_env(NATS_URL=nats_url, DATABASE_URL=database_url, POLAR_WEBHOOK_SECRET=SECRET,
                    POLAR_PRO_PRODUCT_ID=PRO_PRODUCT, POLAR_TEAM_PRODUCT_ID="prod_team", **extra)


async def reset_consumer(nats_url: str, stream: str, durable: str) -> None:
    """Start from an empty stream and a fresh durable so another test's leftovers cannot reach this test's database."""
    nc = await nats.connect(topology.servers(nats_url))
    try:
        js = nc.jetstream()
        await topology.ensure_topology(js)
        await js.purge_stream(stream)
        await js.delete_consumer(stream, durable)
        await topology.ensure_topology(js)
    finally:
        await nc.close()


async def reset_webhook_consumer(nats_url: str) -> None:
    await reset_consumer(nats_url, topology.POLAR_WEBHOOKS.name, topology.BILLING_WEBHOOKS.name)


def start_billing(env: dict[str, str], log_dir: Path, **extra: str) -> ServiceProcess:
    svc = start_service("billing", {**env, **extra}, log_dir)
    svc.wait_ready()
    return svc


def post_webhook(ingress: ServiceProcess, payload: dict[str, Any], webhook_id: str) -> httpx.Response:
    body = body_of(payload)
    return httpx.post(f"{ingress.url}/webhooks/polar", content=body, headers=sign(SECRET, body, webhook_id),
                      timeout=10)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {check.__name__}")
        await asyncio.sleep(every)
