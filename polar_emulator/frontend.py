"""The pages a customer's browser sees on Polar, reduced to what a flow needs: pay on the checkout page (which
completes the checkout and sends its webhooks, then redirects to success_url), and look at the portal."""
from __future__ import annotations

import html

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 32rem; margin: 3rem auto">{body}</body></html>"""


def _checkout(request: Request) -> dict | None:
    secret = request.path_params["client_secret"]
    return next((c for c in request.app.state.store.checkouts.values() if c["client_secret"] == secret), None)


async def checkout_page(request: Request) -> Response:
    checkout = _checkout(request)
    if checkout is None:
        return HTMLResponse(PAGE.format(title="Not found", body="<h1>Checkout not found</h1>"), status_code=404)
    product = html.escape(checkout["product"]["name"])
    body = (f"<h1>Polar emulator checkout</h1><p id=product>{product}</p>"
            f"<p id=customer>{html.escape(checkout.get('external_customer_id') or '')}</p>"
            f"<p id=status>{checkout['status']}</p>"
            f'<form method=post action="{request.url.path}/pay"><button id=pay type=submit>Pay</button></form>')
    return HTMLResponse(PAGE.format(title="Checkout", body=body))


async def checkout_pay(request: Request) -> Response:
    checkout = _checkout(request)
    if checkout is None or checkout["status"] != "open":
        return HTMLResponse(PAGE.format(title="Gone", body="<h1>This checkout is closed</h1>"), status_code=410)
    request.app.state.lifecycle.purchase(checkout["external_customer_id"], checkout["product_id"], checkout["id"])
    target = (checkout.get("success_url") or "/").replace("{CHECKOUT_ID}", checkout["id"])
    return RedirectResponse(target, status_code=303)


async def portal_page(request: Request) -> Response:
    body = "<h1>Polar emulator customer portal</h1><p>Manage your subscription here.</p>"
    return HTMLResponse(PAGE.format(title="Customer portal", body=body))


ROUTES = [
    Route("/frontend/checkout/{client_secret}", checkout_page, methods=["GET"]),
    Route("/frontend/checkout/{client_secret}/pay", checkout_pay, methods=["POST"]),
    Route("/frontend/{org}/portal", portal_page, methods=["GET"]),
]
