"""Wiring only: the runtime, the usage consumer, the Polar sync loop, the lifespan."""
from __future__ import annotations

import asyncio
import logging
from polar.v2026_10 import PolarAsync
from starlette.applications import Starlette

from shared import topology
from shared.pull import BatchPuller
from shared.service import GRACEFUL_TIMEOUT, Runtime, new_runtime, service_app

from . import handlers, thresholds
from .polar_sync import PolarSync
from .settings import UsageSyncSettings

SERVICE = "usage-sync"
log = logging.getLogger(__name__)


def build_app(settings: UsageSyncSettings) -> Starlette:
    rt = new_runtime(SERVICE, settings)

    async def start_consuming(rt: Runtime) -> None:
        puller = BatchPuller(rt.broker.connection.jetstream(timeout=10), topology.USAGE.name,
                             topology.USAGE_SYNC.name, lambda msgs: handlers.on_usage_batch(msgs, rt),
                             batch_size=settings.usage_batch_size, concurrency=settings.usage_consumers)
        puller.start()
        rt.extra["puller"] = puller
        rt.extra["thresholds"] = asyncio.create_task(thresholds.loop(rt))

    async def stop_consuming(rt: Runtime) -> None:
        await rt.extra["puller"].stop(timeout=GRACEFUL_TIMEOUT)  # the batch in hand is committed and acked
        rt.extra["thresholds"].cancel()

    async def start_sync(rt: Runtime) -> None:
        if not settings.polar_configured:
            log.warning("polar.not_configured", extra={"effect": "usage is recorded and kept unsynced"})
            return
        assert settings.polar_access_token is not None
        polar = PolarAsync(settings.polar_access_token.get_secret_value(), base_url=settings.polar_base_url,
                           organization_id=settings.polar_organization_id, timeout=10.0)
        sync = PolarSync(rt, polar, event_name=settings.polar_usage_event_name,
                         batch_size=settings.polar_ingest_batch_size,
                         flush_interval=settings.polar_flush_interval_seconds,
                         max_requests_per_second=settings.polar_max_requests_per_second)
        rt.extra["polar"] = polar
        rt.extra["sync_task"] = asyncio.create_task(sync.run())

    async def stop_sync(rt: Runtime) -> None:
        task = rt.extra.get("sync_task")
        if task:
            task.cancel()  # a batch in flight rolls back; its rows are resent (Polar dedups them)
            await asyncio.gather(task, return_exceptions=True)
        if "polar" in rt.extra:
            await rt.extra["polar"].__aexit__(None, None, None)

    return service_app(rt, on_start=[start_consuming, start_sync], on_stop=[stop_consuming, stop_sync])
