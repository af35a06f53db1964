"""Wiring only: the runtime, the routes, the lifespan."""
from starlette.applications import Starlette

from shared.service import new_runtime, service_app

from .settings import IngressSettings

SERVICE = "ingress"


def build_app(settings: IngressSettings) -> Starlette:
    rt = new_runtime(SERVICE, settings)
    return service_app(rt)
