"""Billing applies Polar's webhooks to rows: once, monotonically, in any order."""
from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from billing.apply_webhook import apply_webhook
from billing.polar_models import REDACTED_KEYS, Webhook

from shared.db import create_pool
from shared.plans import PlanCatalog
from shared.retry import PermanentError
from tests.support.webhooks import PRO_PRODUCT, all_examples, body_of, example, retarget

CATALOG = PlanCatalog(pro_product_id=PRO_PRODUCT, team_product_id="prod_team")


async def apply(conn: asyncpg.Connection, payload: dict[str, Any], webhook_id: str):
    return await apply_webhook(conn, CATALOG, Webhook.parse(webhook_id, body_of(payload)))


async def one(conn: asyncpg.Connection, sql: str, *args: Any) -> dict[str, Any]:
    row = await conn.fetchrow(sql, *args)
    assert row is not None, sql
    return dict(row)


def _unredacted(value: Any, path: str = "") -> list[str]:
    """Paths of billing addresses / tax ids that still hold a real value."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k in REDACTED_KEYS and v not in (None, "[redacted]"):
                found.append(f"{path}.{k}")
            found += _unredacted(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _unredacted(v, f"{path}[{i}]")
    return found


def test_the_examples_do_carry_addresses_and_tax_ids_to_redact() -> None:
    assert _unredacted(example("order.paid")) and _unredacted(example("customer.created"))



async def test_redacted_keys_are_found_however_the_body_spells_them(db: asyncpg.Connection) -> None:
    """Redaction happens as the body is parsed: a key written with a JSON escape is the same key."""
    payload = example("subscription.updated")
    body = body_of(payload).decode()[:-1] + ', "customer_tax_i\\u0064": ["FR123", "eu_vat"]}'
    outcome = await apply_webhook(db, CATALOG, Webhook.parse("wh-spelling", body.encode()))
    assert outcome.status == "applied"
    stored = (await one(db, "SELECT payload FROM webhook_log"))["payload"]
    assert stored["customer_tax_id"] == "[redacted]" and _unredacted(stored) == []
    assert stored["data"]["customer"]["billing_address"] == "[redacted]"


EXPECTED: dict[str, tuple[str, dict[str, Any]]] = {
    "checkout.created": ("SELECT * FROM checkouts", {"user_id": "usr_1337", "status": "open"}),
    "checkout.updated": ("SELECT * FROM checkouts", {"user_id": "usr_1337", "status": "succeeded"}),
    "customer.created": ("SELECT * FROM customers", {"user_id": "usr_1337", "deleted_at": None}),
    "customer.deleted": ("SELECT * FROM customers", {"user_id": "usr_1337"}),
    "customer.state_changed": ("SELECT * FROM subscriptions", {"user_id": "usr_1337", "plan": "pro", "status": "active"}),
    "subscription.created": ("SELECT * FROM subscriptions", {"plan": "pro", "status": "active", "amount_cents": 2000}),
    "subscription.active": ("SELECT * FROM subscriptions", {"plan": "pro", "status": "active", "user_id": "usr_1337"}),
    "subscription.updated": ("SELECT * FROM subscriptions", {"status": "active", "cancel_at_period_end": True}),
    "subscription.canceled": ("SELECT * FROM subscriptions", {"status": "active", "cancel_at_period_end": True}),
    "subscription.uncanceled": ("SELECT * FROM subscriptions", {"status": "active", "cancel_at_period_end": False}),
    "subscription.cycled": ("SELECT * FROM subscriptions", {"status": "active"}),
    "subscription.past_due": ("SELECT * FROM subscriptions", {"status": "past_due", "plan": "pro"}),
    "subscription.revoked": ("SELECT * FROM subscriptions", {"status": "canceled", "plan": "pro"}),
    "order.created": ("SELECT * FROM orders", {"status": "pending", "paid": False, "user_id": "usr_1337"}),
    "order.paid": ("SELECT * FROM orders", {"status": "paid", "paid": True, "billing_reason": "subscription_create"}),
    "order.refunded": ("SELECT * FROM orders", {"status": "refunded"}),
    "benefit_grant.created": ("SELECT * FROM meter_credits", {"units": 1_000_000, "revoked_at": None, "user_id": "usr_1337"}),
    "benefit_grant.cycled": ("SELECT * FROM meter_credits", {"units": 1_000_000, "revoked_at": None}),
    "benefit_grant.revoked": ("SELECT * FROM meter_credits", {"units": 1_000_000}),
}


def test_every_example_has_an_expectation() -> None:
    assert set(all_examples()) == set(EXPECTED)


@pytest.mark.parametrize("event_type", sorted(EXPECTED))
async def test_every_polar_example_gives_the_expected_rows(db: asyncpg.Connection, event_type: str) -> None:
    payload = example(event_type)
    outcome = await apply(db, payload, f"wh-{event_type}")
    assert outcome.status == "applied"
    sql, expected = EXPECTED[event_type]
    row = await one(db, sql)
    assert {k: row[k] for k in expected} == expected
    log = await one(db, "SELECT * FROM webhook_log")
    assert (log["webhook_id"], log["type"], log["status"], log["attempts"]) == (f"wh-{event_type}", event_type, "applied", 1)
    assert _unredacted(log["payload"]) == []
    if event_type == "customer.deleted":
        assert row["deleted_at"] is not None
    if event_type == "benefit_grant.revoked":
        assert row["revoked_at"] is not None


async def test_a_repeated_webhook_is_applied_once(db: asyncpg.Connection) -> None:
    first = await apply(db, example("subscription.active"), "wh-1")
    assert first.status == "applied" and [c.new_plan for c in first.changes] == ["pro"]
    again = await apply(db, example("subscription.active"), "wh-1")
    assert again.status == "duplicate" and again.changes == []
    assert (await one(db, "SELECT attempts FROM webhook_log"))["attempts"] == 1


async def test_a_late_retry_of_an_older_snapshot_does_not_regress_state(db: asyncpg.Connection) -> None:
    await apply(db, example("subscription.canceled"), "wh-new")  # modified 09-15, cancel_at_period_end
    await apply(db, example("subscription.active"), "wh-old")  # modified 09-01, arrives late
    row = await one(db, "SELECT cancel_at_period_end, version FROM subscriptions")
    assert row["cancel_at_period_end"] is True
    assert (await one(db, "SELECT status FROM webhook_log WHERE webhook_id='wh-old'"))["status"] == "applied"


async def test_an_unknown_product_is_stored_and_flagged_never_guessed(db: asyncpg.Connection) -> None:
    payload = example("subscription.active")
    payload["data"]["product_id"] = "prod_nobody_knows"
    outcome = await apply(db, payload, "wh-x")
    row = await one(db, "SELECT plan, unknown_product, product_id FROM subscriptions")
    assert row == {"plan": None, "unknown_product": True, "product_id": "prod_nobody_knows"}
    assert outcome.changes == []  # an unknown product grants no plan


async def test_unhandled_types_and_other_benefits_are_logged_as_skipped(db: asyncpg.Connection) -> None:
    out = await apply(db, {"type": "member.created", "timestamp": "2026-09-01T12:00:00Z", "data": {"id": "m"}}, "wh-m")
    assert out.status == "skipped"
    grant = example("benefit_grant.created")
    grant["data"]["benefit"]["type"] = "discord"
    assert (await apply(db, grant, "wh-d")).status == "skipped"
    rows = await db.fetch("SELECT webhook_id, status, error FROM webhook_log ORDER BY 1")
    assert [(r["webhook_id"], r["status"]) for r in rows] == [("wh-d", "skipped"), ("wh-m", "skipped")]
    assert await db.fetchval("SELECT count(*) FROM meter_credits") == 0


async def test_a_malformed_payload_is_a_permanent_error_and_nothing_is_kept(db: asyncpg.Connection) -> None:
    with pytest.raises(PermanentError):
        await apply(db, {"type": "subscription.updated", "timestamp": "2026-09-01T12:00:00Z", "data": {"id": "s"}}, "wh-b")
    assert await db.fetchval("SELECT count(*) FROM webhook_log") == 0  # rolled back: not marked seen
    assert await db.fetchval("SELECT count(*) FROM subscriptions") == 0


async def test_plan_changes_are_reported_once_per_actual_change(db: asyncpg.Connection) -> None:
    steps = ["subscription.created", "subscription.active", "subscription.canceled", "subscription.past_due",
             "subscription.revoked"]
    seen = []
    for i, step in enumerate(steps):
        payload = example(step)
        if step == "subscription.revoked":  # dunning exhausted after past_due
            payload["data"]["modified_at"] = "2026-10-20T00:00:00Z"
            payload["timestamp"] = "2026-10-20T00:00:01Z"
        out = await apply(db, payload, f"wh-{i}")
        seen += [(c.old_plan, c.old_status, c.new_plan, c.status, c.cancel_at_period_end) for c in out.changes]
    # Plan, status, and a cancellation at period end (the chat service tells the user when Pro ends) each count.
    assert seen == [("free", None, "pro", "active", False), ("pro", "active", "pro", "active", True),
                    ("pro", "active", "pro", "past_due", False), ("pro", "past_due", "free", None, False)]


# --- any order ------------------------------------------------------------------------------------------------
def lifecycle(suffix: str) -> list[tuple[str, dict[str, Any]]]:
    """buy → cancel → uncancel → renew → past_due → revoke, as (webhook id, payload), in emit order."""
    names = ["checkout.created", "customer.created", "subscription.created", "subscription.active", "order.created",
             "order.paid", "checkout.updated", "benefit_grant.created", "subscription.updated",
             "subscription.canceled", "subscription.uncanceled", "subscription.cycled", "benefit_grant.cycled",
             "subscription.past_due", "subscription.revoked", "benefit_grant.revoked"]
    events = []
    for name in names:
        payload = retarget(example(name), suffix)
        if name in ("subscription.revoked", "benefit_grant.revoked"):  # revoked after dunning, after past_due
            payload["data"]["modified_at"] = "2026-10-20T00:00:00Z"
            payload["timestamp"] = "2026-10-20T00:00:01Z"
        events.append((f"wh-{suffix}-{name}", payload))
    return events


SNAPSHOT_SQL = {
    "customers": "SELECT * FROM customers WHERE user_id = $1",
    "subscriptions": "SELECT * FROM subscriptions WHERE user_id = $1",
    "orders": "SELECT * FROM orders WHERE user_id = $1",
    "checkouts": "SELECT * FROM checkouts WHERE user_id = $1",
    "meter_credits": "SELECT * FROM meter_credits WHERE user_id = $1",
}


async def snapshot(conn: asyncpg.Connection, suffix: str) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for table, sql in SNAPSHOT_SQL.items():
        rows = []
        for r in await conn.fetch(sql, f"usr_1337-{suffix}"):
            d = {k: (v.replace(f"-{suffix}", "") if isinstance(v, str) else v) for k, v in dict(r).items()
                 if k not in ("created_at", "updated_at")}
            rows.append(d)
        out[table] = sorted(rows, key=repr)
    return out


async def test_lifecycle_in_any_order_duplicated_and_concurrent_ends_in_the_same_rows(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=8)
    try:
        async with pool.acquire() as conn:
            for webhook_id, payload in lifecycle("inorder"):
                await apply(conn, payload, webhook_id)
            expected = await snapshot(conn, "inorder")
        assert expected["subscriptions"][0]["status"] == "canceled"
        assert expected["meter_credits"][0]["revoked_at"] is not None

        async def deliver(webhook_id: str, payload: dict[str, Any]) -> None:
            async with pool.acquire() as conn:
                await apply(conn, payload, webhook_id)

        rng = random.Random(20261124)
        permutations = 200
        for p in range(permutations):
            suffix = f"p{p}"
            deliveries = [d for d in lifecycle(suffix) for _ in range(rng.randint(1, 5))]
            rng.shuffle(deliveries)
            await asyncio.gather(*(deliver(w, payload) for w, payload in deliveries))
            async with pool.acquire() as conn:
                got = await snapshot(conn, suffix)
                assert got == expected, f"permutation {p} differs"
                applied = await conn.fetchval(
                    "SELECT count(*) FROM webhook_log WHERE webhook_id LIKE $1 AND status='applied' AND attempts=1",
                    f"wh-{suffix}-%")
                assert applied == len(lifecycle(suffix))
    finally:
        await pool.close()


async def test_the_retention_job_deletes_log_rows_past_the_retention_only(database_url: str) -> None:
    from billing.cron import purge_webhook_log_once

    pool = await create_pool(database_url)
    try:
        async with pool.acquire() as conn:
            await apply(conn, example("order.paid"), "wh-recent")
            await apply(conn, example("order.created"), "wh-old")
            await conn.execute("UPDATE webhook_log SET received_at = now() - interval '31 days' "
                               "WHERE webhook_id = 'wh-old'")
        assert await purge_webhook_log_once(pool, retention_days=30, now=datetime.now(UTC)) == 1
        async with pool.acquire() as conn:
            assert [r["webhook_id"] for r in await conn.fetch("SELECT webhook_id FROM webhook_log")] == ["wh-recent"]
            assert await conn.fetchval("SELECT count(*) FROM orders") == 1  # state stays; only the log ages out
    finally:
        await pool.close()


async def test_an_envelope_timestamp_with_a_positive_offset_is_applied(db: asyncpg.Connection) -> None:
    payload = retarget(example("subscription.active"), "offset")
    payload["timestamp"] = "2026-09-01T17:30:02+05:30"
    assert (await apply(db, payload, "wh-offset")).status == "applied"
    row = await one(db, "SELECT status, plan, event_ts FROM subscriptions WHERE id = $1", payload["data"]["id"])
    assert (row["status"], row["plan"]) == ("active", "pro")
    assert row["event_ts"] == datetime(2026, 9, 1, 12, 0, 2, tzinfo=UTC)


@pytest.mark.parametrize(("external_id", "mapped"), [(42, "42"), ("x" * 3000, None), (True, None), (1.5, None)])
async def test_a_customer_external_id_we_cannot_use_leaves_the_customer_unmapped(
        db: asyncpg.Connection, external_id: object, mapped: str | None) -> None:
    payload = retarget(example("customer.created"), f"ext-{type(external_id).__name__}")
    payload["data"]["external_id"] = None
    payload["data"]["metadata"] = {"__external_id": external_id}
    assert (await apply(db, payload, f"wh-ext-{uuid.uuid4().hex[:6]}")).status == "applied"
    assert (await one(db, "SELECT user_id FROM customers WHERE id = $1", payload["data"]["id"]))["user_id"] == mapped


async def test_a_paused_subscription_does_not_entitle_and_a_resumed_one_does(db: asyncpg.Connection) -> None:
    active = retarget(example("subscription.active"), "pause")
    user = active["data"]["customer"]["external_id"]
    await apply(db, active, "wh-pause-0")
    paused = retarget(example("subscription.active"), "pause")
    paused.update(type="subscription.paused", timestamp="2030-01-01T00:00:00Z")
    paused["data"].update(status="paused", modified_at="2030-01-01T00:00:00Z")
    assert (await apply(db, paused, "wh-pause-1")).status == "applied"
    assert await db.fetchval("SELECT entitled FROM user_plan WHERE user_id = $1", user) is False
    resumed = retarget(example("subscription.active"), "pause")
    resumed.update(type="subscription.resumed", timestamp="2030-01-02T00:00:00Z")
    resumed["data"].update(status="active", modified_at="2030-01-02T00:00:00Z")
    out = await apply(db, resumed, "wh-pause-2")
    assert out.status == "applied" and [(c.old_plan, c.new_plan) for c in out.changes] == [("free", "pro")]


async def test_an_expired_checkout_is_recorded(db: asyncpg.Connection) -> None:
    payload = retarget(example("checkout.updated"), "expired")
    payload["type"] = "checkout.expired"
    payload["data"]["status"] = "expired"
    payload["data"]["modified_at"] = "2031-01-01T00:00:00Z"
    assert (await apply(db, payload, "wh-expired")).status == "applied"
    assert (await one(db, "SELECT status FROM checkouts WHERE id = $1", payload["data"]["id"]))["status"] == "expired"
