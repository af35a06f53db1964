"""Wiring only: the runtime, the subscribers, the lifespan."""
from starlette.applications import Starlette

from shared.service import new_runtime, service_app

from .settings import UsageSyncSettings

SERVICE = "usage-sync"


def build_app(settings: UsageSyncSettings) -> Starlette:
    rt = new_runtime(SERVICE, settings)
    return service_app(rt)
