"""Wiring only: the runtime, the subscribers, the lifespan."""
from __future__ import annotations

import asyncio

from faststream import AckPolicy
from faststream.nats import JStream, PullSub
from faststream.nats.annotations import NatsMessage as CurrentMessage
from polar.v2026_10 import PolarAsync
from starlette.applications import Starlette

from shared import topology
from shared.plans import PlanCatalog
from shared.service import GRACEFUL_TIMEOUT, Runtime, new_runtime, service_app

from . import cron, handlers, outbox, rpc
from .settings import BillingSettings

SERVICE = "billing"


def build_app(settings: BillingSettings) -> Starlette:
    rt = new_runtime(SERVICE, settings)
    rt.extra["catalog"] = PlanCatalog(settings.polar_pro_product_id, settings.polar_team_product_id)
    rt.extra["outbox_wakeup"] = asyncio.Event()
    broker = rt.broker

    @broker.subscriber(
        f"{topology.WEBHOOK_SUBJECT_PREFIX}.>",
        stream=JStream(topology.POLAR_WEBHOOKS.name, declare=False),
        durable=topology.BILLING_WEBHOOKS.name,
        pull_sub=PullSub(batch_size=1, timeout=5.0),  # one at a time: stream order (the consumer allows 1 in flight)
        ack_policy=AckPolicy.MANUAL,
    )
    async def on_webhook(msg: CurrentMessage) -> None:
        await handlers.on_webhook(msg, rt)

    async def start_rpc(rt: Runtime) -> None:
        rt.extra["rpc"] = rpc.RpcServer(rt)
        await rt.extra["rpc"].start()

    async def stop_rpc(rt: Runtime) -> None:
        await rt.extra["rpc"].stop(timeout=GRACEFUL_TIMEOUT)

    async def start_polar(rt: Runtime) -> None:
        if settings.polar_configured:
            assert settings.polar_access_token is not None
            rt.extra["polar"] = PolarAsync(settings.polar_access_token.get_secret_value(),
                                           base_url=settings.polar_base_url,
                                           organization_id=settings.polar_organization_id, timeout=5.0)

    async def stop_polar(rt: Runtime) -> None:
        if "polar" in rt.extra:
            await rt.extra["polar"].__aexit__(None, None, None)

    async def start_jobs(rt: Runtime) -> None:
        rt.extra["jobs"] = [
            asyncio.create_task(cron.retention_loop(rt, settings.webhook_log_retention_days)),
            asyncio.create_task(outbox.loop(rt, rt.extra["outbox_wakeup"])),
        ]

    async def stop_jobs(rt: Runtime) -> None:
        for task in rt.extra.get("jobs", []):
            task.cancel()

    return service_app(rt, on_start=[start_polar, start_rpc, start_jobs], on_stop=[stop_rpc, stop_jobs, stop_polar])

