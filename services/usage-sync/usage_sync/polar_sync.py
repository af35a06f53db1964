"""The outbox to Polar: unsynced ledger rows → `events.ingest` batches → marked synced.

- Rows are taken `FOR UPDATE SKIP LOCKED` and stay locked until Polar answered and the mark is committed, so two
  usage-sync processes never have the same row in flight. A crash in between resends; Polar's dedup on
  `external_id` (= our event id) makes that a `duplicate`, which counts as success.
- A batch goes when `POLAR_INGEST_BATCH_SIZE` events are waiting, or when the oldest has waited `flush_interval`,
  and takes all that wait, up to 20,000 events or 5 MiB (half Polar's 10 MiB body cap): requests are paced at
  `max_requests_per_second` and at most half the deployment's Polar budget (shared/polar_budget.py), so at a high
  rate batches grow instead of requests (5,000 events/s: one request a second of ~5,000 events).
- 429 → wait Retry-After. 5xx / timeout / network → exponential backoff with jitter, same rows, same ids.
  422 → the events Polar names (by index) are quarantined with its reason and the rest sent again; without an index,
  the batch is bisected until the bad events are alone.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import asyncpg
from polar.v2026_10 import PolarAsync
from prometheus_client import Counter, Gauge

from shared import polar
from shared.polar_budget import Priority
from shared.retry import backoff

from . import repository as repo
from .runtime import UsageSyncRuntime

log = logging.getLogger(__name__)

BATCHES = Counter("usage_polar_batches_total", "events.ingest requests, by outcome", ["outcome"])
for _outcome in ("ok", "rate_limited", "refused", "failed"):  # at 0 from the start: alerts see the first one
    BATCHES.labels(_outcome)
SENT = Counter("usage_polar_events_inserted_total", "Events Polar inserted")
POLAR_DUPLICATES = Counter("usage_polar_duplicates_total", "Events Polar already had (a resend after a crash)")
QUARANTINED = Counter("usage_polar_quarantined_total", "Events Polar refused, kept with its reason")
RETRIES = Counter("usage_polar_retries_total", "Retried sends, by cause", ["cause"])
LAG_EVENTS = Gauge("usage_outbox_pending_events", "Ledger rows not yet in Polar")
LAG_SECONDS = Gauge("usage_outbox_oldest_pending_seconds", "Age of the oldest ledger row not yet in Polar")

MAX_BYTES = 5 * 1024 * 1024
MAX_EVENTS = 20_000


class Backoff(Exception):
    def __init__(self, seconds: float, cause: str) -> None:
        super().__init__(cause)
        self.seconds = seconds
        self.cause = cause


def vendor_of(model: str) -> str:
    m = model.lower().split("/")[-1]
    if m.startswith(("gpt", "o1", "o3", "o4", "text-", "chatgpt")):
        return "openai"
    if m.startswith("claude") or "anthropic" in model.lower():
        return "anthropic"
    if m.startswith("gemini"):
        return "google"
    if m.startswith(("mistral", "mixtral", "codestral")):
        return "mistral"
    return model.lower().split("/")[0] if "/" in model else "unknown"


def to_polar(row: asyncpg.Record, event_name: str, now: datetime) -> dict[str, Any]:
    """Our ledger row as a Polar event. `total_tokens` is what the plan bills (0 when the user's own key paid);
    `_llm` keeps the call's real numbers, `_cost` its list price when the model has one. The timestamp is never in
    the future: Polar refuses those."""
    total = row["input_tokens"] + row["output_tokens"]
    billable = 0 if row["custom_key"] else total
    ts = min(row["occurred_at"], now - timedelta(seconds=2))
    event = {
        "name": event_name,
        "external_customer_id": row["user_id"],
        "external_id": row["event_id"],
        "timestamp": ts.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "metadata": {
            "input_tokens": row["input_tokens"], "output_tokens": row["output_tokens"],
            "cached_input_tokens": row["cached_input_tokens"], "total_tokens": billable,
            "model": row["model"], "vendor": vendor_of(row["model"]), "strategy": "LLM",
            "custom_key": row["custom_key"],
            "_llm": {"vendor": vendor_of(row["model"]), "model": row["model"], "input_tokens": row["input_tokens"],
                     "cached_input_tokens": row["cached_input_tokens"], "output_tokens": row["output_tokens"],
                     "total_tokens": total},
        },
    }
    cost = row.get("cost_micro_usd")
    if cost is not None:  # Polar's cost views: the list price of the call, in cents (docs/polar.md §8)
        event["metadata"]["_cost"] = {"amount": str(Decimal(cost) / 10_000), "currency": "usd"}
    return event


def refused_events(detail: list[tuple[tuple[str | int, ...], str]], size: int) -> dict[int, str]:
    """Polar's 422 detail → {index in the batch: why}, for the entries that name an event (`body.events.<i>…`).
    Empty when no entry names one: the batch is then bisected to find the refused events."""
    reasons: dict[int, list[str]] = {}
    for loc, msg in detail:
        if len(loc) >= 3 and loc[:2] == ("body", "events") and isinstance(loc[2], int) and 0 <= loc[2] < size:
            reasons.setdefault(loc[2], []).append(f"{'.'.join(str(p) for p in loc[3:]) or 'event'}: {msg}")
    return {i: "; ".join(why) for i, why in reasons.items()}


class PolarSync:
    def __init__(self, rt: UsageSyncRuntime, client: PolarAsync) -> None:
        s = rt.settings
        self.rt = rt
        self.polar = client
        self.event_name = s.polar_usage_event_name
        self.batch_size = s.polar_ingest_batch_size
        self.flush_interval = s.polar_flush_interval_seconds
        own_cap, _ = rt.budget.caps(Priority.INGEST)  # requests per window: spread evenly over it
        self.min_gap = max(1.0 / s.polar_max_requests_per_second, rt.budget.window_seconds / own_cap)
        self._last_request = 0.0
        self._failures = 0
        self._occurred_at: dict[str, datetime] = {}  # of the rows taken by the step in hand

    async def run(self) -> None:
        while not self.rt.stopping.is_set():
            try:
                sent = await self.step()
                self._failures = 0
            except Backoff as b:
                RETRIES.labels(b.cause).inc()
                log.warning("polar.ingest_retry", extra={"cause": b.cause, "wait_seconds": round(b.seconds, 2)})
                await asyncio.sleep(b.seconds)
                continue
            except Exception:
                log.exception("polar.sync_failed")
                self._failures += 1
                await asyncio.sleep(backoff(self._failures, base=1.0, cap=30.0))
                continue
            if not sent:
                await asyncio.sleep(0.1)

    async def step(self) -> int:
        """One batch, if one is due. Returns how many rows left the outbox."""
        async with self.rt.pool.acquire() as conn:
            n, age = await repo.outbox_lag(conn)
            LAG_EVENTS.set(n)
            LAG_SECONDS.set(age)
            if n == 0 or (n < self.batch_size and age < self.flush_interval):
                return 0
            async with conn.transaction():
                rows = await repo.take_pending(conn, MAX_EVENTS)
                # The ledger's partition key, so marking them synced touches only their months.
                self._occurred_at = {row["event_id"]: row["occurred_at"] for row in rows}
                now = datetime.now(UTC)
                batch: list[dict[str, Any]] = []
                size = 2
                for row in rows:
                    event = to_polar(row, self.event_name, now)
                    size += len(json.dumps(event)) + 1
                    if size > MAX_BYTES and batch:
                        break
                    batch.append(event)
                return await self._send(conn, batch)

    async def _send(self, conn: asyncpg.Connection, batch: list[dict[str, Any]]) -> int:
        if not batch:
            return 0
        wait = self._last_request + self.min_gap - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_request = time.monotonic()
        try:
            # Plain dicts in Polar's wire shape (the SDK takes them as its TypedDicts).
            events = cast(Any, batch)
            result = await polar.call("events.ingest", lambda: self.polar.events.ingest(events=events),
                                      budget=self.rt.budget, priority=Priority.INGEST)
        except polar.PolarRateLimited as exc:
            BATCHES.labels("rate_limited").inc()
            raise Backoff(float(exc.retry_after or 1), "rate_limited") from exc
        except polar.PolarRejected as exc:
            BATCHES.labels("refused").inc()
            return await self._split(conn, batch, exc)
        except polar.PolarUnavailable as exc:
            BATCHES.labels("failed").inc()
            self._failures += 1
            raise Backoff(backoff(self._failures, jitter=True), exc.cause) from exc
        BATCHES.labels("ok").inc()
        SENT.inc(result.inserted)
        POLAR_DUPLICATES.inc(result.duplicates)
        if result.inserted + result.duplicates != len(batch):
            log.error("polar.ingest_count_mismatch", extra={"sent": len(batch), "inserted": result.inserted,
                                                            "duplicates": result.duplicates})
        await repo.mark_synced(conn, [(e["external_id"], self._occurred_at[e["external_id"]]) for e in batch])
        log.info("polar.ingested", extra={"events": len(batch), "inserted": result.inserted,
                                          "duplicates": result.duplicates})
        return len(batch)

    async def _split(self, conn: asyncpg.Connection, batch: list[dict[str, Any]], exc: polar.PolarRejected) -> int:
        reasons = refused_events(exc.detail, len(batch))
        if reasons:
            for i, why in reasons.items():
                await self._quarantine(conn, batch[i], why)
            rest = [e for i, e in enumerate(batch) if i not in reasons]
            return len(reasons) + await self._send(conn, rest)
        if len(batch) == 1:
            await self._quarantine(conn, batch[0], "; ".join(msg for _, msg in exc.detail) or "refused by Polar (422)")
            return 1
        half = len(batch) // 2
        return await self._send(conn, batch[:half]) + await self._send(conn, batch[half:])

    async def _quarantine(self, conn: asyncpg.Connection, event: dict[str, Any], reason: str) -> None:
        await repo.quarantine(conn, event["external_id"], f"Polar 422: {reason}")
        QUARANTINED.inc()
        log.warning("polar.event_quarantined", extra={"event_id": event["external_id"],
                                                      "user_id": event["external_customer_id"], "reason": reason})
