"""Wiring only: usage-sync's runtime, its consumer and loops."""
from __future__ import annotations

import logging

from starlette.applications import Starlette

from shared.service import Service, service_app

from . import handlers, outbox, retention, runtime
from .polar_sync import PolarSync
from .runtime import UsageSyncRuntime
from .settings import UsageSyncSettings

SERVICE = "usage-sync"
log = logging.getLogger(__name__)


async def sync_to_polar(rt: UsageSyncRuntime) -> None:
    if rt.polar is None:
        log.warning("polar.not_configured", extra={"effect": "usage is recorded and kept unsynced"})
        return
    await PolarSync(rt, rt.polar).run()


def build_app(settings: UsageSyncSettings) -> Starlette:
    return service_app(Service(
        name=SERVICE,
        settings=settings,
        build=runtime.build(settings),
        consumers=[handlers.on_usage_batch.with_options(
            batch_size=settings.usage_batch_size, concurrency=settings.usage_consumers,
            parse=handlers.in_ledger_window(settings.usage_ledger_retention_days))],
        loops=[outbox.loop, sync_to_polar, retention.loop],
        close=runtime.close,
    ))
