"""The pages a chat product links to or embeds: status and upgrade, checkout success and cancel.

Access is by a signed, short-lived token (polar_billing_client.links), never a bare user id. Checkout and portal links are made by
billing (over NATS) when the user presses the button, and the browser is redirected; the portal URL carries a bearer
token and is never rendered or logged. The success page never claims payment from the redirect alone: it waits until
billing has seen the checkout succeed and the subscription become active.
"""
from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

from polar_billing_client import links
from polar_billing_client.client import BillingClient, BillingError, BillingUnavailable
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.plans import PLANS, PlanName

from . import repository as repo
from .runtime import IngressRuntime

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
CONFIRM_PATIENCE = 120  # seconds of "confirming…" before the page says the payment is still being processed
REFRESH_SECONDS = 2


def _rt(request: Request) -> IngressRuntime:
    return request.app.state.rt


def _client(request: Request) -> BillingClient:
    return _rt(request).billing


def _user(request: Request, token: str | None) -> str | None:
    secret = _rt(request).settings.status_page_secret
    if secret is None or not token:
        return None
    try:
        return links.verify(secret.get_secret_value(), token)
    except links.BadToken:
        return None


def _page(request: Request, name: str, status_code: int = 200, **context) -> Response:
    context.setdefault("app_url", _rt(request).settings.pages_app_url)
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _forbidden(request: Request) -> Response:
    # Says nothing about why, or about any user.
    return _page(request, "message.html", 403, title="This link is not valid",
                 message="The link has expired or is not valid. Open your billing page again from the app.")


def _unavailable(request: Request, exc: Exception) -> Response:
    log.warning("pages.billing_error", extra={"error": type(exc).__name__, "code": getattr(exc, "code", None)})
    if isinstance(exc, BillingError) and exc.code == "no_customer":
        return _page(request, "message.html", 409, title="No billing account yet",
                     message="You have no paid subscription to manage yet.")
    return _page(request, "message.html", 503, title="Billing is busy",
                 message="We could not reach billing just now. Please try again in a minute.")


def _percent(used: int, limit: int | None) -> int | None:
    return None if not limit else min(100, round(100 * used / limit))


async def status_page(request: Request) -> Response:
    if _rt(request).settings.status_page_secret is None:
        return _page(request, "message.html", 503, title="Not configured", message="Status pages are not set up.")
    token = request.query_params.get("token")
    user_id = _user(request, token)
    if user_id is None:
        return _forbidden(request)
    try:
        status = await _client(request).status(user_id)
    except (BillingError, BillingUnavailable) as exc:
        return _unavailable(request, exc)
    plan = PLANS[PlanName(status.plan)]
    rows = []
    for name, label in (("tokens_per_month", "Tokens this period"), ("threads_per_month", "Threads this period"),
                        ("messages_per_day", "Messages today")):
        state = status.limits[name]
        rows.append({"key": name, "label": label, "used": state.used, "limit": state.limit,
                     "percent": _percent(state.used, state.limit), "resets_at": state.resets_at,
                     "overage": name == "tokens_per_month" and plan.overage and state.limit is not None
                     and state.used > state.limit})
    return _page(request, "status.html", status=status, plan=plan, rows=rows, token=token,
                 upgrades=[PLANS[PlanName.PRO], PLANS[PlanName.TEAM]] if status.plan == "free" else [])


async def _redirect_to_billing_link(request: Request, make_link) -> Response:
    """A form POST from the status page: check its token, have billing make the link, send the browser there."""
    form = await request.form()
    token = form.get("token")
    user_id = _user(request, token if isinstance(token, str) else None)
    if user_id is None:
        return _forbidden(request)
    try:
        url = await make_link(_client(request), user_id, form)
    except (BillingError, BillingUnavailable) as exc:
        return _unavailable(request, exc)
    return RedirectResponse(url, status_code=303)


async def _checkout_link(client: BillingClient, user_id: str, form) -> str:
    plan = str(form.get("plan", ""))
    link = await client.checkout_url(user_id, plan)
    log.info("pages.checkout_redirect", extra={"user_id": user_id, "plan": plan, "checkout_id": link.checkout_id})
    return link.url


async def _portal_link(client: BillingClient, user_id: str, form) -> str:
    link = await client.portal_url(user_id)
    log.info("pages.portal_redirect", extra={"user_id": user_id})  # never the URL: it holds a bearer token
    return link.url


async def upgrade(request: Request) -> Response:
    return await _redirect_to_billing_link(request, _checkout_link)


async def manage(request: Request) -> Response:
    return await _redirect_to_billing_link(request, _portal_link)


async def success(request: Request) -> Response:
    checkout_id = request.query_params.get("checkout_id", "")
    if not checkout_id or len(checkout_id) > 100:
        return _page(request, "message.html", 400, title="Missing checkout", message="This page needs a checkout.")
    try:
        started = int(request.query_params.get("started", ""))
    except ValueError:
        started = int(time.time())
    async with _rt(request).pool.acquire() as conn:
        row = await repo.checkout_outcome(conn, checkout_id)
    if (row is not None and row["checkout_status"] == "succeeded"
            and row["subscription_status"] in ("active", "trialing")):
        plan = PLANS[PlanName(row["plan"])].title if row["plan"] else "your plan"
        return _page(request, "success.html", state="confirmed", plan=plan)
    if time.time() - started > CONFIRM_PATIENCE:
        return _page(request, "success.html", state="slow", checkout_id=checkout_id)
    again = f"{request.url.path}?{urlencode({'checkout_id': checkout_id, 'started': started})}"
    return _page(request, "success.html", state="confirming", refresh=REFRESH_SECONDS, refresh_url=again)


async def cancel(request: Request) -> Response:
    return _page(request, "message.html", title="Checkout canceled",
                 message="Nothing was charged. You can upgrade any time from your billing page.")


class SecurityHeaders:
    """CSP and framing rules for the pages: no external assets, and framing only by the configured origins."""

    def __init__(self, app: ASGIApp, frame_ancestors: str) -> None:
        self.app = app
        self.csp = ("default-src 'none'; style-src 'self'; img-src 'self' data:; base-uri 'none'; "
                    f"frame-ancestors {frame_ancestors}")
        self.deny_frames = frame_ancestors.strip() == "'none'"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(("/subscription", "/static")):
            return await self.app(scope, receive, send)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["content-security-policy"] = self.csp
                headers["x-content-type-options"] = "nosniff"
                headers["referrer-policy"] = "no-referrer"
                headers["cache-control"] = "no-store"
                if self.deny_frames:
                    headers["x-frame-options"] = "DENY"
            await send(message)

        await self.app(scope, receive, with_headers)


ROUTES = [
    Route("/subscription/status", status_page, methods=["GET"]),
    Route("/subscription/upgrade", upgrade, methods=["POST"]),
    Route("/subscription/manage", manage, methods=["POST"]),
    Route("/subscription/success", success, methods=["GET"]),
    Route("/subscription/cancel", cancel, methods=["GET"]),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]


def fmt_time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%b %-d, %Y %H:%M UTC") if value else ""


templates.env.filters["when"] = fmt_time
