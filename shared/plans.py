"""The plan catalog: every limit of every plan, as data. Handlers ask the catalog; none hard-codes a limit.

Polar product ids come from settings (`POLAR_PRO_PRODUCT_ID`, `POLAR_TEAM_PRODUCT_ID`); Free has no product.
"""
from __future__ import annotations

import fnmatch
from enum import Enum

from pydantic import BaseModel, ConfigDict


class PlanName(str, Enum):
    FREE = "free"
    PRO = "pro"
    TEAM = "team"


class Period(str, Enum):
    """What a limit's counter resets with."""

    BILLING_PERIOD = "billing_period"  # the subscription's current period; calendar month UTC for Free
    UTC_DAY = "utc_day"


class LimitName(str, Enum):
    TOKENS_PER_MONTH = "tokens_per_month"
    THREADS_PER_MONTH = "threads_per_month"
    MESSAGES_PER_DAY = "messages_per_day"


LIMIT_PERIODS: dict[LimitName, Period] = {
    LimitName.TOKENS_PER_MONTH: Period.BILLING_PERIOD,
    LimitName.THREADS_PER_MONTH: Period.BILLING_PERIOD,
    LimitName.MESSAGES_PER_DAY: Period.UTC_DAY,
}


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: PlanName
    title: str
    price_cents: int  # per month
    # None = unlimited.
    limits: dict[LimitName, int | None]
    # Tokens past the limit are allowed and billed by Polar's metered price (Pro) instead of refused (Free).
    overage: bool
    overage_cents_per_1k_tokens: int | None
    # None = every model; otherwise glob patterns, matched case-insensitively.
    models: tuple[str, ...] | None
    custom_keys: bool
    # Usage analytics: breakdowns of any past period and the CSV export on the status page.
    analytics: bool = False

    def allows_model(self, model: str) -> bool:
        if self.models is None:
            return True
        m = model.strip().lower()
        return any(fnmatch.fnmatchcase(m, p) for p in self.models)

    def limit(self, name: LimitName) -> int | None:
        return self.limits.get(name)


# Free's "basic models": the GPT-3.5 and Claude Haiku families, with or without a vendor prefix or dated suffix.
BASIC_MODELS = ("gpt-3.5*", "*/gpt-3.5*", "claude-*haiku*", "*/claude-*haiku*", "anthropic.claude-*haiku*")

FREE = Plan(
    name=PlanName.FREE,
    title="Free",
    price_cents=0,
    limits={LimitName.TOKENS_PER_MONTH: 100_000, LimitName.THREADS_PER_MONTH: 50, LimitName.MESSAGES_PER_DAY: 100},
    overage=False,
    overage_cents_per_1k_tokens=None,
    models=BASIC_MODELS,
    custom_keys=False,
)
PRO = Plan(
    name=PlanName.PRO,
    title="Pro",
    price_cents=2_000,
    limits={LimitName.TOKENS_PER_MONTH: 1_000_000, LimitName.THREADS_PER_MONTH: None, LimitName.MESSAGES_PER_DAY: 1_000},
    overage=True,
    overage_cents_per_1k_tokens=1,
    models=None,
    custom_keys=True,
)
TEAM = Plan(
    name=PlanName.TEAM,
    title="Team",
    price_cents=5_000,
    # Tokens are pay-as-you-go through Polar's metered price: nothing is included and nothing is capped.
    limits={LimitName.TOKENS_PER_MONTH: None, LimitName.THREADS_PER_MONTH: None, LimitName.MESSAGES_PER_DAY: None},
    overage=True,
    overage_cents_per_1k_tokens=1,
    models=None,
    custom_keys=True,
    analytics=True,
)

PLANS: dict[PlanName, Plan] = {p.name: p for p in (FREE, PRO, TEAM)}

# Subscription statuses that still entitle the user to the plan (past_due: Polar's dunning grace).
ENTITLED_STATUSES = ("active", "trialing", "past_due")
# When a user holds several entitled subscriptions, the higher plan sets the limits.
PLAN_RANK = {PlanName.FREE: 0, PlanName.PRO: 1, PlanName.TEAM: 2}


def plan_rank_sql(column: str = "plan") -> str:
    """PLAN_RANK as an SQL expression over a plan column, for ORDER BY."""
    whens = " ".join(f"WHEN '{name.value}' THEN {rank}" for name, rank in PLAN_RANK.items())
    return f"CASE {column} {whens} ELSE 0 END"


class PlanCatalog:
    """The plans, bound to this deployment's Polar product ids."""

    def __init__(self, pro_product_id: str | None, team_product_id: str | None) -> None:
        self._by_product: dict[str, Plan] = {}
        if pro_product_id:
            self._by_product[pro_product_id] = PRO
        if team_product_id:
            self._by_product[team_product_id] = TEAM
        self._product_of = {plan.name: pid for pid, plan in self._by_product.items()}

    def get(self, name: PlanName | str) -> Plan:
        return PLANS[PlanName(name)]

    def for_product(self, product_id: str) -> Plan | None:
        """The plan a Polar product sells, or None for a product this deployment does not know (stored, flagged)."""
        return self._by_product.get(product_id)

    def product_id(self, name: PlanName | str) -> str | None:
        return self._product_of.get(PlanName(name))
