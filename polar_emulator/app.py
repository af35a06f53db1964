"""Wiring: the store, the deliverer, Polar's routes behind Polar's edge, the admin routes."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse

from . import admin, api, frontend, webhooks_api
from .config import EmulatorSettings
from .delivery import Deliverer
from .lifecycle import Lifecycle
from .middleware import PolarEdge
from .query import QueryError, query_error_handler
from .state import Store


def build_app(settings: EmulatorSettings | None = None) -> Starlette:
    settings = settings or EmulatorSettings()
    store = Store(settings)
    deliverer = Deliverer(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await deliverer.close()

    async def not_found(request, exc) -> JSONResponse:
        return JSONResponse({"detail": "Not Found"}, status_code=404)

    app = Starlette(routes=[*api.ROUTES, *webhooks_api.ROUTES, *admin.ROUTES, *frontend.ROUTES], lifespan=lifespan,
                    middleware=[Middleware(PolarEdge, store=store)],
                    exception_handlers={404: not_found, QueryError: query_error_handler})
    app.state.store = store
    app.state.deliverer = deliverer
    app.state.lifecycle = Lifecycle(store, deliverer)
    return app
