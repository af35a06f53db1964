"""Wiring only: billing's runtime, its consumer, endpoints and loops."""
from __future__ import annotations

from starlette.applications import Starlette

from shared.service import Service, service_app

from . import cron, handlers, outbox, reconcile, rpc, runtime
from .settings import BillingSettings

SERVICE = "billing"


def build_app(settings: BillingSettings) -> Starlette:
    return service_app(Service(
        name=SERVICE,
        settings=settings,
        build=runtime.build(settings),
        consumers=[handlers.on_webhook],
        endpoints=rpc.ENDPOINTS,
        loops=[outbox.loop, cron.retention_loop, reconcile.loop],
        close=runtime.close,
    ))
