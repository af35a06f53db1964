"""PAGES_FRAME_ANCESTORS as an operator writes it (.env and compose's env_file strip quotes) still protects the pages:
`frame-ancestors 'none'` and `X-Frame-Options: DENY`, never the ignored `frame-ancestors none`."""
from __future__ import annotations

import pytest
from ingress.pages import SecurityHeaders
from ingress.settings import IngressSettings
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient


def settings(value: str) -> IngressSettings:
    return IngressSettings(nats_url="nats://x:4222", database_url="postgresql://x/y", polar_webhook_secret="whsec_x",
                           pages_frame_ancestors=value)


@pytest.mark.parametrize(("written", "header", "deny"), [
    ("none", "'none'", True), ("'none'", "'none'", True), ('"none"', "'none'", True), ("", "'none'", True),
    ("self", "'self'", False), ("self https://chat.example.com", "'self' https://chat.example.com", False),
    ("https://a.example, https://b.example", "https://a.example https://b.example", False),
])
def test_the_pages_carry_the_framing_rule_the_operator_meant(written: str, header: str, deny: bool) -> None:
    app = Starlette(routes=[Route("/subscription/cancel", lambda r: PlainTextResponse("ok"))])
    app.add_middleware(SecurityHeaders, frame_ancestors=settings(written).pages_frame_ancestors)
    resp = TestClient(app).get("/subscription/cancel")
    assert resp.headers["content-security-policy"].endswith(f"frame-ancestors {header}")
    assert (resp.headers.get("x-frame-options") == "DENY") is deny


def test_none_with_other_sources_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be combined"):
        settings("none https://chat.example.com")
