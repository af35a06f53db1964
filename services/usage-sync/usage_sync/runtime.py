"""Usage-sync's runtime: what its consumer and loops are given."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from polar.v2026_10 import PolarAsync

from shared import polar
from shared.polar_budget import Budget
from shared.prices import PriceCatalog
from shared.runtime import Connections, Runtime

from .ledger import Remembered
from .settings import UsageSyncSettings

POLAR_TIMEOUT = 30.0  # an ingest batch of up to 5 MiB


@dataclass(kw_only=True)
class UsageSyncRuntime(Runtime[UsageSyncSettings]):
    polar: PolarAsync | None  # None: POLAR_ACCESS_TOKEN unset; usage is recorded and kept unsynced
    prices: PriceCatalog  # what each event cost, at list price
    budget: Budget  # the deployment's one Polar request budget
    # Threads this process saw committed, so a thread already counted is not sent again with every batch.
    remembered: Remembered = field(default_factory=Remembered)


def build(settings: UsageSyncSettings) -> Callable[[Connections], Awaitable[UsageSyncRuntime]]:
    async def runtime(conns: Connections) -> UsageSyncRuntime:
        return UsageSyncRuntime(**conns.fields(), settings=settings,
                                polar=polar.make_client(settings, timeout=POLAR_TIMEOUT),
                                prices=PriceCatalog.load(settings.model_prices_file),
                                budget=Budget(conns.pool, settings.polar_budget_per_window,
                                              settings.polar_rate_window_seconds))
    return runtime


async def close(rt: UsageSyncRuntime) -> None:
    await polar.close(rt.polar)
