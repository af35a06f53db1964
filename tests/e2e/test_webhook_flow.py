"""Polar → ingress → JetStream → billing → PostgreSQL, with the real processes."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import nats
import pytest

from shared.db import connect
from tests.conftest import Servers
from tests.e2e.procs import ROOT, ServiceProcess, start_service
from tests.e2e.stack import SECRET, eventually, post_webhook, reset_webhook_consumer, stack_env, start_billing
from tests.integration.test_billing_webhooks import lifecycle
from tests.support.webhooks import example, retarget


@pytest.fixture
async def stack(servers: Servers, database_url: str, tmp_path) -> AsyncIterator[tuple[ServiceProcess, ServiceProcess, asyncpg.Connection, dict]]:
    await reset_webhook_consumer(servers.nats_url)
    env = stack_env(servers.nats_url, database_url)
    ingress = start_service("ingress", env, tmp_path)
    ingress.wait_ready()
    billing = start_billing(env, tmp_path)
    conn = await connect(database_url)
    yield ingress, billing, conn, env
    await conn.close()
    assert ingress.stop() == 0 and billing.stop() == 0
    for svc in (ingress, billing):
        log = svc.log.read_text()
        assert SECRET not in log and SECRET.removeprefix("whsec_") not in log


async def test_a_subscription_lifecycle_through_the_edge_ends_in_the_right_rows_and_events(stack, servers) -> None:
    ingress, _billing, db, _ = stack
    events = lifecycle("e2e")
    for webhook_id, payload in events:
        assert post_webhook(ingress, payload, webhook_id).status_code == 202
    post_webhook(ingress, events[3][1], events[3][0])  # a retry of subscription.active, late

    async def all_applied() -> bool:
        return await db.fetchval("SELECT count(*) FROM webhook_log WHERE status = 'applied'") == len(events)

    await eventually(all_applied)
    sub = await db.fetchrow("SELECT plan, status, user_id, cancel_at_period_end FROM subscriptions")
    assert dict(sub) == {"plan": "pro", "status": "canceled", "user_id": "usr_1337-e2e", "cancel_at_period_end": True}
    assert await db.fetchval("SELECT status FROM orders") == "paid"
    assert await db.fetchval("SELECT revoked_at IS NOT NULL FROM meter_credits")

    nc = await nats.connect(servers.nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe("billing.event.subscription.changed", ordered_consumer=True)
        seen = []
        try:
            while True:
                msg = await sub.next_msg(timeout=3)
                body = json.loads(msg.data)
                if body["user_id"] == "usr_1337-e2e":
                    seen.append((body["old_plan"], body["new_plan"], body["status"], body["cancel_at_period_end"]))
        except nats.errors.TimeoutError:
            pass
    finally:
        await nc.close()
    # Plan, status, and a cancellation at period end (set, then taken back) each count as a change.
    assert seen == [("free", "pro", "active", False), ("pro", "pro", "active", True), ("pro", "pro", "active", False),
                    ("pro", "pro", "past_due", False), ("pro", "free", None, False)]


async def test_a_webhook_that_keeps_failing_is_dead_lettered_logged_and_replayable(stack, servers) -> None:
    ingress, _billing, db, env = stack
    # A fault in applying (here: the database refuses this one subscription) that an operator can fix.
    await db.execute("""CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                        $$ BEGIN RAISE EXCEPTION 'injected fault for %', NEW.id; END $$""")
    await db.execute("""CREATE TRIGGER refuse BEFORE INSERT ON subscriptions FOR EACH ROW
                        WHEN (NEW.id LIKE '%-poison') EXECUTE FUNCTION refuse()""")
    payload = retarget(example("subscription.active"), "poison")
    assert post_webhook(ingress, payload, "wh-poison").status_code == 202
    after = retarget(example("customer.created"), "after")
    assert post_webhook(ingress, after, "wh-after").status_code == 202

    async def failed() -> asyncpg.Record | None:
        return await db.fetchrow("SELECT status, attempts, error FROM webhook_log WHERE webhook_id = 'wh-poison' "
                                 "AND status = 'failed'")

    row = await eventually(failed, timeout=30)
    assert row["attempts"] == 5 and "injected fault" in row["error"]
    assert await db.fetchval("SELECT count(*) FROM subscriptions") == 0

    async def next_applied() -> bool:  # the queue moves on past the dead letter
        return await db.fetchval("SELECT status FROM webhook_log WHERE webhook_id = 'wh-after'") == "applied"

    await eventually(next_applied)
    nc = await nats.connect(servers.nats_url)
    try:
        js = nc.jetstream()
        dead = await js.get_last_msg("DEAD_LETTERS", "deadletter.billing.polar.webhook.subscription.active")
        assert dead.headers["webhook-id"] == "wh-poison" and "injected fault" in dead.headers["x-dead-letter-reason"]
        assert json.loads(dead.data)["data"]["id"].endswith("-poison")
    finally:
        await nc.close()

    await db.execute("DROP TRIGGER refuse ON subscriptions")
    res = subprocess.run([sys.executable, "-m", "ops.cli", "webhooks", "replay", "--failed", "--json"], env=env,
                         cwd=ROOT, check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert {"webhook_id": "wh-poison", "outcome": "applied", "detail": None} in json.loads(res.stdout)
    assert await db.fetchval("SELECT status FROM webhook_log WHERE webhook_id = 'wh-poison'") == "applied"
    assert await db.fetchval("SELECT plan FROM subscriptions") == "pro"


async def test_a_signed_but_malformed_event_is_dead_lettered_at_once(stack) -> None:
    ingress, _billing, db, _ = stack
    bad = {"type": "subscription.updated", "timestamp": "2026-09-01T12:00:00Z", "data": {"id": "sub_x"}}
    assert post_webhook(ingress, bad, "wh-malformed").status_code == 202

    async def failed() -> asyncpg.Record | None:
        return await db.fetchrow("SELECT attempts, error FROM webhook_log WHERE webhook_id='wh-malformed' "
                                 "AND status='failed'")

    row = await eventually(failed, timeout=10)
    assert row["attempts"] == 1 and "Subscription payload" in row["error"]


async def test_text_the_database_cannot_hold_is_stored_replaced_and_said_so(stack) -> None:
    ingress, _billing, db, _ = stack
    # PostgreSQL's text and jsonb cannot hold U+0000. In a customer name (which billing does not store) and in a user
    # id, the webhook is still applied: the text is stored with U+FFFD in its place, a user id that held one maps to
    # no user (no client of ours can send it), and the log row says so. Nothing waits behind it.
    named = retarget(example("customer.created"), "nul-name")
    named["data"]["name"] = "Ada\u0000Lovelace"
    poison = retarget(example("subscription.active"), "nul-id")
    poison["data"]["customer"]["external_id"] = "usr_\u0000nul"
    poison["data"]["currency"] = "usd\u0000"
    after = retarget(example("customer.created"), "after-nul")
    for payload, webhook_id in ((named, "wh-nul-name"), (poison, "wh-nul-id"), (after, "wh-after-nul")):
        assert post_webhook(ingress, payload, webhook_id).status_code == 202

    async def settled() -> bool:
        rows = await db.fetch("SELECT webhook_id, status FROM webhook_log WHERE webhook_id LIKE 'wh-%nul%'")
        return {r["webhook_id"]: r["status"] for r in rows} == {
            "wh-nul-name": "applied", "wh-nul-id": "applied", "wh-after-nul": "applied"}

    await eventually(settled, timeout=20)
    row = await db.fetchrow("SELECT error, payload FROM webhook_log WHERE webhook_id = 'wh-nul-id'")
    assert "U+0000" in row["error"] and row["payload"]["data"]["customer"]["external_id"] == "usr_\ufffdnul"
    sub = await db.fetchrow("SELECT user_id, currency, status FROM subscriptions WHERE id = $1", poison["data"]["id"])
    assert (sub["user_id"], sub["currency"], sub["status"]) == (None, "usd\ufffd", "active")
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
