"""Wiring only: ingress's runtime, routes and headers."""
from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from shared.service import Service, service_app

from . import chat_api, pages, runtime
from .settings import IngressSettings
from .webhook_endpoint import receive

SERVICE = "ingress"


def build_app(settings: IngressSettings) -> Starlette:
    app = service_app(Service(
        name=SERVICE,
        settings=settings,
        build=runtime.build(settings),
        routes=[Route("/webhooks/polar", receive, methods=["POST"]), *chat_api.ROUTES, *pages.ROUTES],
    ))
    app.add_middleware(pages.SecurityHeaders, frame_ancestors=settings.pages_frame_ancestors)
    return app
