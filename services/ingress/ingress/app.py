"""Wiring only: the runtime, the routes, the lifespan."""
from starlette.applications import Starlette
from starlette.routing import Route

from shared.service import new_runtime, service_app

from . import pages
from .settings import IngressSettings
from .webhooks import receive, signing_keys

SERVICE = "ingress"


def build_app(settings: IngressSettings) -> Starlette:
    rt = new_runtime(SERVICE, settings)
    app = service_app(rt, routes=[Route("/webhooks/polar", receive, methods=["POST"]), *pages.ROUTES])
    app.add_middleware(pages.SecurityHeaders, frame_ancestors=settings.pages_frame_ancestors)
    app.state.signing_keys = signing_keys(settings.polar_webhook_secret.get_secret_value())
    return app
