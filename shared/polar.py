"""Every call to Polar goes through here: one client per process (polar-sdk's `PolarAsync`), and one reading of its
errors, so the request/reply API and the usage outbox agree on what is worth retrying.

- 429 → `PolarRateLimited(retry_after)`: never retried here; the caller waits or tells its own caller.
- 422 → `PolarRejected(detail)`: Polar refused the content; retrying the same request cannot help.
- 5xx, timeout, dropped connection → retried up to `attempts` with backoff, then `PolarUnavailable`.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from polar import PolarNetworkError, PolarServerError
from polar.base import PolarRateLimitError
from polar.v2026_10 import PolarAsync
from polar.v2026_10 import errors as polar_errors

from shared.polar_budget import Budget, OverBudget, Priority
from shared.retry import backoff
from shared.settings import PolarSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class PolarRateLimited(Exception):
    def __init__(self, retry_after: int | None) -> None:
        super().__init__(f"rate limited (retry after {retry_after} s)")
        self.retry_after = retry_after


class PolarRejected(Exception):
    """A 422: `detail` is Polar's list of (location, message), e.g. (("body", "events", 3, "timestamp"), "…")."""

    def __init__(self, detail: list[tuple[tuple[str | int, ...], str]]) -> None:
        self.detail = detail
        super().__init__(self.summary())

    def summary(self) -> str:
        return "; ".join(f"{'.'.join(str(p) for p in loc)}: {msg}" for loc, msg in self.detail)[:500] or "refused"


class PolarUnavailable(Exception):
    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause  # the last failure's kind: PolarServerError, PolarNetworkError


def make_client(settings: PolarSettings, *, timeout: float) -> PolarAsync | None:
    """None when no access token is set: Polar is "not configured", a state the services run in."""
    if settings.polar_access_token is None:
        return None
    return PolarAsync(settings.polar_access_token.get_secret_value(), base_url=settings.polar_base_url,
                      organization_id=settings.polar_organization_id, timeout=timeout)


async def close(client: PolarAsync | None) -> None:
    if client is not None:
        await client.__aexit__(None, None, None)


async def call(what: str, fn: Callable[[], Awaitable[T]], *, attempts: int = 1, budget: Budget | None = None,
               priority: Priority = Priority.INTERACTIVE, wait_up_to: float | None = None) -> T:
    """`fn` (one polar-sdk call), each attempt first taking a unit of the deployment's `budget` at `priority`
    (shared/polar_budget.py); a 429 is written down there so that every process honours it."""
    for attempt in range(1, attempts + 1):
        if budget is not None:
            try:
                await budget.take(priority, wait_up_to=wait_up_to)
            except OverBudget as exc:
                raise PolarRateLimited(exc.retry_after) from None
        try:
            return await fn()
        except PolarRateLimitError as exc:
            if budget is not None:
                await budget.rate_limited(exc.retry_after, what)
            raise PolarRateLimited(exc.retry_after) from None
        except polar_errors.HTTPValidationError as exc:
            detail = (exc.error.detail if exc.error else None) or []
            raise PolarRejected([(tuple(d.loc), d.msg) for d in detail]) from None
        except (PolarServerError, PolarNetworkError) as exc:
            log.warning("polar.call_failed", extra={"call": what, "attempt": attempt, "error": type(exc).__name__})
            if attempt == attempts:
                raise PolarUnavailable(f"Polar did not answer {what} after {attempt} attempt(s)",
                                       type(exc).__name__) from None
            await asyncio.sleep(backoff(attempt, base=0.2))
    raise AssertionError("attempts must be at least 1")
