"""Wiring only: the runtime, the routes, the lifespan."""
from starlette.applications import Starlette
from starlette.routing import Route

from shared.service import new_runtime, service_app

from .settings import IngressSettings
from .webhooks import receive, signing_keys

SERVICE = "ingress"


def build_app(settings: IngressSettings) -> Starlette:
    rt = new_runtime(SERVICE, settings)
    app = service_app(rt, routes=[Route("/webhooks/polar", receive, methods=["POST"])])
    app.state.signing_keys = signing_keys(settings.polar_webhook_secret.get_secret_value())
    return app
