"""Billing's runtime: what its handlers, endpoints and loops are given."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from polar.v2026_10 import PolarAsync

from shared import polar
from shared.plans import PlanCatalog
from shared.polar_budget import Budget
from shared.runtime import Connections, Runtime

from .reads import Reads
from .settings import BillingSettings

POLAR_TIMEOUT = 5.0  # a chat user waits on checkout and portal links


@dataclass(kw_only=True)
class BillingRuntime(Runtime[BillingSettings]):
    catalog: PlanCatalog
    polar: PolarAsync | None  # None: POLAR_ACCESS_TOKEN unset ("Polar not configured")
    budget: Budget  # the deployment's one Polar request budget
    reads: Reads  # check, status and usage: the replica (DATABASE_READ_URL) or the primary
    outbox_wakeup: asyncio.Event = field(default_factory=asyncio.Event)  # set after a webhook wrote change events


def build(settings: BillingSettings) -> Callable[[Connections], Awaitable[BillingRuntime]]:
    async def runtime(conns: Connections) -> BillingRuntime:
        return BillingRuntime(**conns.fields(), settings=settings,
                              catalog=PlanCatalog(settings.polar_pro_product_id, settings.polar_team_product_id),
                              polar=polar.make_client(settings, timeout=POLAR_TIMEOUT),
                              budget=Budget(conns.pool, settings.polar_budget_per_window,
                                            settings.polar_rate_window_seconds),
                              reads=await Reads.open(conns.pool, settings.database_read_url,
                                                     settings.database_read_max_lag_seconds))
    return runtime


async def close(rt: BillingRuntime) -> None:
    await polar.close(rt.polar)
    await rt.reads.close()
