"""Whether a user may have one more AI response, and why not: the plan's limits against the counters plus the
reservations still open. Pure: the caller reads the state (one query) and passes the time."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from polar_billing_client.contracts import CheckReply, CheckRequest, LimitState

from shared.periods import Period, billing_period, day_of, month_of
from shared.plans import LimitName, Plan, PlanCatalog

# Not entitled, not over: the user should fix payment rather than buy a plan.
SUSPENDED = {"incomplete", "unpaid", "paused"}


SUB_COLUMNS = ("id", "plan", "status", "entitled", "current_period_start", "current_period_end",
               "cancel_at_period_end")


@dataclass
class UserState:
    sub: dict[str, Any] | None  # the user's `user_plan` row (whether it entitles them: `entitled`), None if none
    counters: Sequence[Sequence[Any]]  # (limit_name, period_start, used)
    reservations: Sequence[Sequence[Any]]  # (period_start, estimated_tokens, new_thread, thread_id)
    thread_periods: Sequence[Any]

    @classmethod
    def from_row(cls, row: Any) -> UserState:
        """From repository.user_state's row."""
        sub = {c: row[c] for c in SUB_COLUMNS} if row["id"] is not None else None
        return cls(sub, row["counters"], row["reservations"], row["thread_periods"])


def _ts(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


@dataclass
class Evaluation:
    plan: Plan
    status: str | None
    period: Period  # tokens and threads
    day: Period  # messages
    reply: CheckReply
    new_thread: bool


def evaluate(state: UserState, req: CheckRequest, catalog: PlanCatalog, now: datetime) -> Evaluation:
    sub = state.sub
    status = sub["status"] if sub else None
    entitled = sub is not None and bool(sub["entitled"])
    plan = catalog.get(sub["plan"]) if sub is not None and entitled else catalog.get("free")
    if sub is not None and entitled and sub["current_period_start"] and sub["current_period_end"]:
        period = billing_period((_ts(sub["current_period_start"]), _ts(sub["current_period_end"])), now)
    else:
        period = month_of(now)
    day = day_of(now)

    def counter(limit: LimitName, start: datetime) -> int:
        return sum(int(used) for name, p_start, used in state.counters
                   if name == limit.value and _ts(p_start) == start)

    open_in_period = [r for r in state.reservations if _ts(r[0]) == period[0]]
    reserved_tokens = sum(int(r[1]) for r in open_in_period)
    reserved_threads = {r[3] for r in open_in_period if r[2]}
    thread_known = req.thread_id is not None and (
        any(_ts(p) == period[0] for p in state.thread_periods) or req.thread_id in reserved_threads)
    new_thread = req.thread_id is not None and not thread_known

    used = {
        LimitName.TOKENS_PER_MONTH: counter(LimitName.TOKENS_PER_MONTH, period[0]) + reserved_tokens,
        LimitName.THREADS_PER_MONTH: counter(LimitName.THREADS_PER_MONTH, period[0]) + len(reserved_threads),
        LimitName.MESSAGES_PER_DAY: counter(LimitName.MESSAGES_PER_DAY, day[0]) + len(state.reservations),
    }
    resets = {LimitName.TOKENS_PER_MONTH: period[1], LimitName.THREADS_PER_MONTH: period[1],
              LimitName.MESSAGES_PER_DAY: day[1]}
    limits = {name.value: LimitState(used=used[name], limit=plan.limit(name), resets_at=resets[name])
              for name in LimitName}

    refused: list[LimitName] = []
    overage = False
    tokens_limit = plan.limit(LimitName.TOKENS_PER_MONTH)
    want = req.estimated_tokens or 0
    if tokens_limit is not None:
        over = used[LimitName.TOKENS_PER_MONTH] + want > tokens_limit or used[LimitName.TOKENS_PER_MONTH] >= tokens_limit
        if over and plan.overage:
            overage = True
        elif over:
            refused.append(LimitName.TOKENS_PER_MONTH)
    threads_limit = plan.limit(LimitName.THREADS_PER_MONTH)
    if new_thread and threads_limit is not None and used[LimitName.THREADS_PER_MONTH] + 1 > threads_limit:
        refused.append(LimitName.THREADS_PER_MONTH)
    messages_limit = plan.limit(LimitName.MESSAGES_PER_DAY)
    if messages_limit is not None and used[LimitName.MESSAGES_PER_DAY] + 1 > messages_limit:
        refused.append(LimitName.MESSAGES_PER_DAY)

    reason: str | None = None
    resets_at: datetime | None = None
    if req.model is not None and not plan.allows_model(req.model):
        reason = "model_not_in_plan"
    elif req.custom_key and not plan.custom_keys:
        reason = "custom_key_not_in_plan"
    elif refused:
        binding = max(refused, key=lambda name: resets[name])  # the one that keeps the user waiting longest
        reason, resets_at = binding.value, resets[binding]
    if reason is not None and sub is not None and status in SUSPENDED:
        reason = "subscription_inactive"
    reply = CheckReply(allowed=reason is None, plan=plan.name.value, reason=reason, resets_at=resets_at,
                       limits=limits, overage=overage and reason is None)
    return Evaluation(plan, status, period, day, reply, new_thread)
