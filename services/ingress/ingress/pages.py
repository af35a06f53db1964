"""The pages a chat product links to or embeds: status and upgrade, checkout success and cancel, the usage CSV.

Access is by a signed, short-lived token (polar_billing_client.links), never a bare user id. Checkout and portal links are made by
billing (over NATS) when the user presses the button, and the browser is redirected; the portal URL carries a bearer
token and is never rendered or logged. The success page never claims payment from the redirect alone: it waits until
billing has seen the checkout succeed and the subscription become active.

The status page also shows where the tokens went (billing.rpc.usage): this period's tokens per day by model
(charts.py: inline SVG, no script) and the top threads; notices at 80 % and 100 % of a limit and for Pro's overage;
and, for a plan with `analytics` (Team), any past period by model and thread and a CSV export of it.
"""
from __future__ import annotations

import asyncio
import csv
import io
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from polar_billing_client import links
from polar_billing_client.client import BillingClient, BillingError, BillingUnavailable
from polar_billing_client.contracts import MAX_USAGE_DAYS, LimitState, UsageReport, UsageRow, UsageSums
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.plans import PLAN_RANK, PLANS, LimitName, Plan, PlanName

from . import charts
from . import repository as repo
from .runtime import IngressRuntime

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
CONFIRM_PATIENCE = 120  # seconds of "confirming…" before the page says the payment is still being processed
REFRESH_SECONDS = 2
WARN_PERCENT = 80  # a notice from here; at 100 % the limit blocks (or, for tokens on Pro, overage begins)
CHART_MODELS = 5  # the chart's colours: the top models, the rest as "other"
TOP_THREADS = 10
TEAM_MODELS = 20  # the by-model breakdown (analytics)
CSV_CONCURRENCY = 8  # the CSV's day-by-day questions to billing in flight at once
LIMIT_LABELS = {"tokens_per_month": "Tokens this period", "threads_per_month": "Threads this period",
                "messages_per_day": "Messages today"}


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


def _level(plan: Plan, name: str, state: LimitState) -> str:
    """overage (tokens past a plan's included ones, billed), full (the limit blocks), warn (80 %), or ""."""
    if state.limit is None:
        return ""
    if name == LimitName.TOKENS_PER_MONTH.value and plan.overage and state.used > state.limit:
        return "overage"
    if state.used >= state.limit:
        return "full"
    return "warn" if 100 * state.used >= WARN_PERCENT * state.limit else ""


# --- notices: 80 %, 100 %, overage ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Notice:
    key: str  # the limit: tokens_per_month | threads_per_month | messages_per_day
    level: str  # warn | blocked | overage
    title: str
    body: str
    lifted_by: tuple[Plan, ...] = field(default=())  # higher plans without this limit, or with more of it


def overage_usd(tokens: int, cents_per_1k: int) -> Decimal:
    """What `tokens` past the included ones cost at the plan's metered price, in dollars (to the cent)."""
    return (Decimal(tokens) * cents_per_1k / 1000 / 100).quantize(Decimal("0.01"), ROUND_HALF_UP)


def _usd(value: Decimal) -> str:
    return f"${value:,.2f}"


def _lifted_by(plan: Plan, name: LimitName, limit: int) -> tuple[Plan, ...]:
    return tuple(p for p in PLANS.values() if PLAN_RANK[p.name] > PLAN_RANK[plan.name]
                 and (p.limit(name) is None or (p.limit(name) or 0) > limit))


def _more(plans: Sequence[Plan], name: LimitName) -> str:
    """What each plan allows of a limit, e.g. "Pro: 1,000,000 tokens a month, then $0.01 per 1K; Team: no limit,
    $0.01 per 1K tokens": tokens past a plan's limit (or all of them, on Team) are billed, and the offer says so."""
    unit = {LimitName.TOKENS_PER_MONTH: " tokens a month", LimitName.THREADS_PER_MONTH: " threads a month",
            LimitName.MESSAGES_PER_DAY: " messages a day"}[name]
    parts = []
    for p in plans:
        limit, cents = p.limit(name), p.overage_cents_per_1k_tokens
        price = f"${cents / 100:.2f} per 1K" if name == LimitName.TOKENS_PER_MONTH and p.overage and cents else ""
        if limit is None:
            parts.append(f"{p.title}: no limit" + (f", {price} tokens" if price else ""))
        else:
            parts.append(f"{p.title}: {limit:,}{unit}" + (f", then {price}" if price else ""))
    return "; ".join(parts)


def limit_notices(plan: Plan, limits: Mapping[str, LimitState]) -> list[Notice]:
    """What the user should know about their limits, most pressing first: a limit that blocks, tokens billed past
    the included ones, a limit at 80 % or more. Each names the limit, what is left and when it resets."""
    blocked: list[Notice] = []
    overage: list[Notice] = []
    warn: list[Notice] = []
    for name in LimitName:
        state = limits.get(name.value)
        if state is None or state.limit is None:
            continue
        used, limit, label = state.used, state.limit, LIMIT_LABELS[name.value]
        resets = fmt_time(state.resets_at) or "the next period"
        tokens = name == LimitName.TOKENS_PER_MONTH
        price = (f"${plan.overage_cents_per_1k_tokens / 100:.2f} per 1K tokens"
                 if plan.overage and plan.overage_cents_per_1k_tokens else "")
        if tokens and price and used >= limit:
            over = used - limit
            cents = plan.overage_cents_per_1k_tokens or 0
            body = (f"{over:,} tokens past the {limit:,} included, billed at {price}: "
                    f"{_usd(overage_usd(over, cents))} so far." if over else
                    f"All {limit:,} included tokens are used; more are billed at {price}.")
            overage.append(Notice(name.value, "overage", f"{label}: past the included tokens",
                                  f"{body} Nothing is blocked. Included tokens renew {resets}."))
        elif used >= limit:
            what = {LimitName.TOKENS_PER_MONTH: f"You have used all {limit:,} tokens of this period: new messages "
                                                f"are blocked until {resets}.",
                    LimitName.THREADS_PER_MONTH: f"You have started all {limit:,} threads of this period: you can "
                                                 f"keep writing in them, but new threads are blocked until {resets}.",
                    LimitName.MESSAGES_PER_DAY: f"You have sent all {limit:,} messages for today: new messages are "
                                                f"blocked until {resets}."}[name]
            lifted = _lifted_by(plan, name, limit)
            if lifted:
                what += f" More with {_more(lifted, name)}."
            blocked.append(Notice(name.value, "blocked", f"{label}: limit reached", what, lifted))
        elif 100 * used >= WARN_PERCENT * limit:
            left = limit - used
            percent = min(99, 100 * used // limit)
            of = f"{left:,} of the {limit:,} included tokens left" if tokens and price else f"{left:,} of {limit:,} left"
            after = f"; after that, tokens are billed at {price}" if tokens and price else ""
            warn.append(Notice(name.value, "warn", f"{label}: {percent}% used", f"{of}{after}. Resets {resets}."))
    return blocked + overage + warn


# --- the period a Team user looks at ------------------------------------------------------------------------------
class BadPeriod(ValueError):
    pass


ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _day(name: str, value: str) -> date:
    if not ISO_DAY.fullmatch(value):
        raise BadPeriod(f"“{name}” must be a date written YYYY-MM-DD, like 2026-11-01.")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadPeriod(f"“{name}” is not a real date: write YYYY-MM-DD, like 2026-11-01.") from None


def parse_period(from_: str | None, to: str | None, today: date) -> tuple[date, date] | None:
    """`?from=YYYY-MM-DD&to=YYYY-MM-DD` (UTC days; `to` not included), or None for the current period."""
    if not from_ and not to:
        return None
    if not from_ or not to:
        raise BadPeriod("Give both “from” and “to”, like from=2026-10-01&to=2026-11-01 (“to” is not included).")
    start, end = _day("from", from_), _day("to", to)
    if start >= end:
        raise BadPeriod("“from” must be before “to” (“to” is not included).")
    if (end - start).days > MAX_USAGE_DAYS:
        raise BadPeriod(f"A period is at most {MAX_USAGE_DAYS} days.")
    if start > today:
        raise BadPeriod("That period has not started yet.")
    return start, end


def add_months(d: date, months: int) -> date:
    """The same day `months` later (or earlier), or the month's last day when it has fewer days."""
    index = d.year * 12 + d.month - 1 + months
    year, month = divmod(index, 12)
    first_of_next = date(year + (month + 1) // 12, (month + 1) % 12 + 1, 1)
    return date(year, month + 1, min(d.day, (first_of_next - timedelta(days=1)).day))


# --- the usage section --------------------------------------------------------------------------------------------
def _status_url(token: str, **params: Any) -> str:
    return "/subscription/status?" + urlencode({"token": token, **params})


def _ranked(rows: Sequence[UsageRow], key: str) -> list[UsageRow]:
    """By billable tokens, largest first; "other" (past the query's limit) last; nothing empty."""
    kept = [r for r in rows if r.events or r.billable_tokens]
    return sorted(kept, key=lambda r: (getattr(r, key) == charts.OTHER, -r.billable_tokens, getattr(r, key) or ""))


async def _usage_section(client: BillingClient, user_id: str, plan: Plan, status_limit: int | None, token: str,
                         period: tuple[date, date] | None, today: date) -> dict[str, Any] | None:
    """The usage section's data, or None when billing could not answer (the rest of the page still shows)."""
    start, end = period or (None, None)
    asks = [client.usage(user_id, from_=start, to=end, group_by=["day", "model"], limit=CHART_MODELS),
            client.usage(user_id, from_=start, to=end, group_by=["thread"], limit=TOP_THREADS)]
    if plan.analytics:
        asks.append(client.usage(user_id, from_=start, to=end, group_by=["model"], limit=TEAM_MODELS))
    answers = await asyncio.gather(*asks, return_exceptions=True)
    failed = [a for a in answers if isinstance(a, BaseException)]
    for error in failed:
        if isinstance(error, BillingError) and error.code == "invalid_request":
            raise BadPeriod(error.message)
        if not isinstance(error, BillingError | BillingUnavailable):
            raise error
    if failed:
        log.warning("pages.usage_unavailable", extra={"error": type(failed[0]).__name__,
                                                      "code": getattr(failed[0], "code", None)})
        return None
    reports = [a for a in answers if isinstance(a, UsageReport)]
    by_day, by_thread = reports[0], reports[1]
    current = period is None
    frm, to = by_day.from_, by_day.to
    section: dict[str, Any] = {
        "range": charts.range_label(frm, to), "from": frm, "to": to, "current": current,
        "chart": charts.usage_chart(by_day.rows, frm, to, limit=status_limit if current else None, today=today),
        "threads": _ranked(by_thread.rows, "thread_id"), "totals": by_thread.totals,
        "models": _ranked(reports[2].rows, "model") if plan.analytics else None,
    }
    if plan.analytics:
        prev = add_months(frm, -1)
        section.update(
            prev_url=_status_url(token, **{"from": prev.isoformat(), "to": frm.isoformat()}),
            next_url=(_status_url(token, **{"from": to.isoformat(), "to": add_months(to, 1).isoformat()})
                      if to <= today else None),
            current_url=None if current else _status_url(token),
            csv_url="/subscription/usage.csv?" + urlencode({"token": token, "from": frm.isoformat(),
                                                             "to": to.isoformat()}))
    return section


def _bad_period(request: Request, token: str, message: str) -> Response:
    return _page(request, "message.html", 400, title="Those dates do not work", message=message,
                 back_url=_status_url(token), back_label="Back to this period")


def _signed_in(request: Request) -> tuple[str, str] | Response:
    """The user and token a page's link names, or the answer instead (503 when not set up, 403 when not valid)."""
    if _rt(request).settings.status_page_secret is None:
        return _page(request, "message.html", 503, title="Not configured", message="Status pages are not set up.")
    token = request.query_params.get("token")
    user_id = _user(request, token)
    if user_id is None or token is None:
        return _forbidden(request)
    return user_id, token


async def status_page(request: Request) -> Response:
    signed = _signed_in(request)
    if isinstance(signed, Response):
        return signed
    user_id, token = signed
    client = _client(request)
    try:
        status = await client.status(user_id)
    except (BillingError, BillingUnavailable) as exc:
        return _unavailable(request, exc)
    plan = PLANS[PlanName(status.plan)]
    today = datetime.now(UTC).date()
    rows = []
    for name, label in LIMIT_LABELS.items():
        state = status.limits[name]
        level = _level(plan, name, state)
        rows.append({"key": name, "label": label, "used": state.used, "limit": state.limit,
                     "percent": _percent(state.used, state.limit), "resets_at": state.resets_at,
                     "level": level, "overage": level == "overage"})
    notices = limit_notices(plan, status.limits)
    lifted: dict[PlanName, Plan] = {}
    for n in notices:
        lifted.update({p.name: p for p in n.lifted_by})
    try:
        period = parse_period(request.query_params.get("from"), request.query_params.get("to"), today) \
            if plan.analytics else None  # other plans see the current period, whatever the link says
        usage = await _usage_section(client, user_id, plan, status.limits["tokens_per_month"].limit, token, period,
                                     today)
    except BadPeriod as exc:
        return _bad_period(request, token, str(exc))
    return _page(request, "status.html", status=status, plan=plan, rows=rows, token=token, notices=notices,
                 offer=sorted(lifted.values(), key=lambda p: PLAN_RANK[p.name]), usage=usage,
                 upgrades=[PLANS[PlanName.PRO], PLANS[PlanName.TEAM]] if status.plan == "free" else [])


# --- the CSV export (analytics) -----------------------------------------------------------------------------------
CSV_COLUMNS = ("day", "model", "thread_id", "events", "input_tokens", "output_tokens", "cached_input_tokens",
               "billable_tokens", "cost_usd")


def _cell(text: str | None) -> str:
    """A text cell a spreadsheet will not run: one starting with = + - @ (or a tab / CR) gets a leading '."""
    text = text or ""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def usage_csv_text(rows: Sequence[UsageRow]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow([r.day.isoformat() if r.day else "", _cell(r.model), _cell(r.thread_id), r.events, r.input_tokens,
                    r.output_tokens, r.cached_input_tokens, r.billable_tokens,
                    "" if r.cost_usd is None else f"{r.cost_usd:.6f}"])
    return out.getvalue()


async def _csv_rows(client: BillingClient, user_id: str, start: date, end: date, today: date) -> list[UsageRow]:
    """Every (day, model, thread) of the period. billing.rpc.usage groups by at most two of the three, so this asks
    day by day, grouped by model and thread (no limit: every one), a few days at a time. Days after today have
    nothing yet and are not asked about."""
    days = [start + timedelta(days=i) for i in range((min(end, today + timedelta(days=1)) - start).days)]
    gate = asyncio.Semaphore(CSV_CONCURRENCY)

    async def one(d: date) -> list[UsageRow]:
        async with gate:
            report = await client.usage(user_id, from_=d, to=d + timedelta(days=1), group_by=["model", "thread"])
        rows = [r.model_copy(update={"day": d}) for r in report.rows if r.events or r.billable_tokens]
        return sorted(rows, key=lambda r: (r.model or "", r.thread_id or ""))

    return [r for day_rows in await asyncio.gather(*(one(d) for d in days)) for r in day_rows]


async def usage_csv(request: Request) -> Response:
    signed = _signed_in(request)
    if isinstance(signed, Response):
        return signed
    user_id, token = signed
    client = _client(request)
    today = datetime.now(UTC).date()
    try:
        status = await client.status(user_id)
        plan = PLANS[PlanName(status.plan)]
        if not plan.analytics:
            return _page(request, "message.html", 403, title="Usage export is part of Team",
                         message="The CSV export of your usage comes with the Team plan.",
                         back_url=_status_url(token), back_label="Back to your plan")
        try:
            period = parse_period(request.query_params.get("from"), request.query_params.get("to"), today)
        except BadPeriod as exc:
            return _bad_period(request, token, str(exc))
        if period is None:  # the current period, as billing counts it
            report = await client.usage(user_id)
            period = (report.from_, report.to)
        rows = await _csv_rows(client, user_id, period[0], period[1], today)
    except BillingError as exc:
        if exc.code == "invalid_request":
            return _bad_period(request, token, exc.message)
        return _unavailable(request, exc)
    except BillingUnavailable as exc:
        return _unavailable(request, exc)
    name = f"usage-{period[0].isoformat()}-to-{(period[1] - timedelta(days=1)).isoformat()}.csv"
    log.info("pages.usage_csv", extra={"user_id": user_id, "rows": len(rows)})
    return Response(usage_csv_text(rows), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{name}"'})


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
    Route("/subscription/usage.csv", usage_csv, methods=["GET"]),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]


def fmt_time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%b %-d, %Y %H:%M UTC") if value else ""


def fmt_number(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def fmt_cost(sums: UsageSums) -> str:
    """A cost at the models' list prices: "—" when none of the events has a known price."""
    if sums.cost_usd is None:
        return "—"
    if 0 < sums.cost_usd < 0.01:
        return "< $0.01"
    return f"${sums.cost_usd:,.2f}"


templates.env.filters["when"] = fmt_time
templates.env.filters["num"] = fmt_number
templates.env.filters["cost"] = fmt_cost
