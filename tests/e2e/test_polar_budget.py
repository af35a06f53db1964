"""One Polar request budget for the deployment, against an emulator that allows 100 requests a minute: usage at
1,000 events/s, a checkout every second and reconciliation sweeps share it, users first, and none of our own traffic
is ever refused with a 429."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import pytest
from polar_billing_client.client import BillingError

from polar_emulator.config import PRO_PRODUCT_ID, TEAM_PRODUCT_ID
from tests.conftest import Servers
from tests.e2e.procs import start_service
from tests.e2e.stack import eventually
from tests.e2e.usage_stack import start_usage_sync
from tests.support.emulator import admin

pytestmark = pytest.mark.asyncio(loop_scope="function")

EVENTS = 20_000
RATE = 1_000  # events per second
LIMIT = 100  # Polar's sandbox limit, per minute


async def test_usage_checkouts_and_a_sweep_share_polars_limit_with_no_429_and_no_failed_checkout(
        usage, servers: Servers, tmp_path) -> None:
    emulator, env, client, db = usage
    admin(emulator, "POST", "rate-limit", json={"per_minute": LIMIT})
    env = {**env, "POLAR_REQUESTS_PER_MINUTE": str(LIMIT), "POLAR_MAX_REQUESTS_PER_SECOND": "1",
           "POLAR_PRO_PRODUCT_ID": PRO_PRODUCT_ID, "POLAR_TEAM_PRODUCT_ID": TEAM_PRODUCT_ID,
           "POLAR_RECONCILE_INTERVAL_SECONDS": "5", "PUBLIC_BASE_URL": "http://chat.example"}
    start_usage_sync(env, tmp_path / "us")
    billing = start_service("billing", env, tmp_path)
    billing.wait_ready()
    users = [f"usr_budget_{i}_{uuid.uuid4().hex[:4]}" for i in range(40)]
    checkouts: list[str] = []
    failures: list[str] = []

    async def buy_every_second(until: float) -> None:
        while time.monotonic() < until:
            t0 = time.monotonic()
            try:
                link = await client.checkout_url(users[len(checkouts) % len(users)], "pro", timeout=20)
                checkouts.append(link.url)
            except BillingError as exc:
                failures.append(exc.code)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))

    async def publish() -> None:
        start = time.monotonic()
        for i in range(0, EVENTS, 100):  # 100 every 0.1 s
            await asyncio.gather(*(client.track_usage(
                user_id=users[j % len(users)], thread_id=f"t{j % 7}", model="gpt-4o", input_tokens=10 + j % 50,
                output_tokens=5, event_id=f"budget-{j}") for j in range(i, i + 100)))
            await asyncio.sleep(max(0.0, start + (i + 100) / RATE - time.monotonic()))

    t0 = time.monotonic()
    await asyncio.gather(publish(), buy_every_second(t0 + EVENTS / RATE + 5))

    async def all_at_polar() -> bool:
        return await db.fetchval("SELECT count(*) FROM usage_events WHERE sync_status = 'synced'") == EVENTS

    await eventually(all_at_polar, timeout=180, every=1)
    sweeps = await db.fetchval("SELECT count(*) FROM reconcile_sweeps WHERE finished_at IS NOT NULL")
    assert sweeps >= 1
    assert failures == [] and len(checkouts) >= EVENTS / RATE  # a checkout every second, none refused
    seen = admin(emulator, "GET", "events").json()
    ids = Counter(e["external_id"] for e in seen["events"])
    assert len(ids) == EVENTS and set(ids.values()) == {1}  # every event once
    limited = admin(emulator, "GET", "rate-limit").json()
    assert limited["throttled_total"] == 0, limited  # no 429 caused by our own traffic
    # Usage took at most half of the budget: batches grew instead of requests.
    requests = [r for r in seen["requests"] if r["path"] == "/v1/events/ingest"]
    per_minute = Counter(int((r["at"] - requests[0]["at"]) // 60) for r in requests)
    assert max(per_minute.values()) <= LIMIT // 2, per_minute
    assert max(b["size"] for b in seen["batches"]) > 1_000
    assert billing.stop() == 0
