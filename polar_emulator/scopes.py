"""Token scopes: an operation runs only if the token holds one of the scopes Polar documents for it.

The scopes come from the OpenAPI document (spec.scopes_for); the token's from EMULATOR_TOKEN_SCOPES (unset: all) or
the admin API. The refusal is Polar's: its `Authenticator` raises `polar.oauth2.exceptions.InsufficientScopeError`
(an authlib RFC 6750 error), whose handler answers 403 with `{"error": "insufficient_scope", "error_description": …}`
and a `WWW-Authenticate: Bearer …` header naming the required scopes. The OpenAPI document does not describe this
403; the shape is taken from Polar's server source (server/polar/oauth2/exceptions.py, exception_handlers.py).
"""
from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .spec import scopes_for

Handler = Callable[[Request], Awaitable[Response]]
DESCRIPTION = "The request requires higher privileges than provided by the access token."
REALM = "polar"  # Polar's settings.WWW_AUTHENTICATE_REALM


def parse(value: str | None) -> frozenset[str] | None:
    """"a:read b:write" or "a:read,b:write"; None (unset) means every scope; "" means none."""
    if value is None:
        return None
    return frozenset(s for s in value.replace(",", " ").split() if s)


def insufficient_scope(required: frozenset[str]) -> Response:
    scope = " ".join(sorted(required))
    header = (f'Bearer realm="{REALM}", scope="{scope}", error="insufficient_scope", '
              f'error_description="{DESCRIPTION}"')
    body = json.dumps({"error": "insufficient_scope", "error_description": DESCRIPTION})
    return Response(body, status_code=403, media_type="application/json",
                    headers={"WWW-Authenticate": header, "Cache-Control": "no-store", "Pragma": "no-cache"})


def scoped(path: str, handler: Handler, method: str) -> Route:
    """A Polar route whose handler first checks the token's scopes against the ones the document lists."""
    required = scopes_for(path, method)

    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        granted: frozenset[str] | None = request.app.state.store.token_scopes
        if granted is not None and required and not granted & required:
            return insufficient_scope(required)
        return await handler(request)

    return Route(path, guarded, methods=[method])
