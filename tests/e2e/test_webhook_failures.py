"""Crashes and outages on the webhook path: nothing applied twice, nothing lost."""
from __future__ import annotations

import time

import httpx
import pytest

from dev.embedded import EmbeddedNats
from shared.db import connect
from tests.conftest import Servers
from tests.e2e.procs import start_service
from tests.e2e.stack import eventually, post_webhook, reset_webhook_consumer, stack_env, start_billing
from tests.support.webhooks import example, retarget


@pytest.mark.parametrize("point", ["billing.after_commit", "billing.before_commit"])
async def test_a_worker_killed_around_the_commit_applies_the_webhook_exactly_once(
    point: str, servers: Servers, database_url: str, tmp_path
) -> None:
    await reset_webhook_consumer(servers.nats_url)
    webhook_id = f"wh-crash-{point}"
    env = stack_env(servers.nats_url, database_url)
    ingress = start_service("ingress", env, tmp_path)
    ingress.wait_ready()
    db = await connect(database_url)
    try:
        (tmp_path / "doomed").mkdir()
        doomed = start_billing(env, tmp_path / "doomed",
                               FAILPOINTS=f"{point}={webhook_id}")
        payload = retarget(example("subscription.active"), "crash")
        resp = post_webhook(ingress, payload, webhook_id)
        assert resp.status_code == 202 and resp.json()["duplicate"] is False
        assert doomed.proc.wait(20) == -9  # kill -9, at that exact point

        committed = await db.fetchval("SELECT count(*) FROM webhook_log WHERE webhook_id = $1", webhook_id)
        assert committed == (1 if point == "billing.after_commit" else 0)
        # The change event was committed with the change (outbox), so it cannot be lost either.
        assert await db.fetchval("SELECT count(*) FROM billing_outbox") == committed

        restarted = start_billing(env, tmp_path)  # JetStream redelivers the unacked message after ack_wait

        async def applied() -> bool:
            return await db.fetchval("SELECT status FROM webhook_log WHERE webhook_id = $1", webhook_id) == "applied"

        await eventually(applied, timeout=30)
        if point == "billing.after_commit":
            # The redelivery of the unacked message must come, and be a no-op.
            async def redelivered_as_duplicate() -> bool:
                return f'"event": "webhook.duplicate", "webhook_id": "{webhook_id}"' in restarted.log.read_text()

            await eventually(redelivered_as_duplicate, timeout=30)
        row = await db.fetchrow("SELECT attempts FROM webhook_log WHERE webhook_id = $1", webhook_id)
        assert row["attempts"] == 1
        assert await db.fetchval("SELECT count(*) FROM subscriptions") == 1
        assert await db.fetchval("SELECT count(*) FROM billing_outbox") == 1

        async def published() -> bool:
            return await db.fetchval("SELECT published_at IS NOT NULL FROM billing_outbox")

        await eventually(published)
        assert restarted.stop() == 0
    finally:
        await db.close()
        ingress.stop()


async def test_nats_down_answers_503_within_5s_and_polars_retry_is_applied_once(
    database_url: str, tmp_path
) -> None:
    nats_server = EmbeddedNats(tmp_path / "nats", sync_always=False)
    nats_url = nats_server.start()
    env = stack_env(nats_url, database_url)
    ingress = start_service("ingress", env, tmp_path)
    ingress.wait_ready()
    billing = start_billing(env, tmp_path)
    db = await connect(database_url)
    payload = retarget(example("subscription.active"), "outage")
    try:
        nats_server.stop()
        t0 = time.monotonic()
        resp = post_webhook(ingress, payload, "wh-outage")
        took = time.monotonic() - t0
        assert resp.status_code == 503 and took < 5.0
        assert resp.headers["retry-after"] == "5"
        ready = httpx.get(f"{ingress.url}/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["checks"]["nats"] != "ok"

        nats_server.start()  # same port, same store

        async def ingress_ready() -> bool:
            return httpx.get(f"{ingress.url}/readyz", timeout=5).status_code == 200

        await eventually(ingress_ready, timeout=20)
        assert post_webhook(ingress, payload, "wh-outage").status_code == 202  # Polar's retry, same id

        async def applied() -> bool:
            return await db.fetchval("SELECT status FROM webhook_log WHERE webhook_id = 'wh-outage'") == "applied"

        await eventually(applied, timeout=30)
        assert await db.fetchval("SELECT count(*) FROM subscriptions") == 1
        assert await db.fetchval("SELECT attempts FROM webhook_log") == 1
    finally:
        await db.close()
        assert ingress.stop() == 0
        assert billing.stop() == 0
        nats_server.stop()
