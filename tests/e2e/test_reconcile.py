"""Polar as the source of truth, against billing and ingress processes, PostgreSQL and the emulator: an organization
imported on first start, a webhook endpoint Polar disabled brought back with what it missed, drift made at Polar
without a webhook repaired, meter drift reported. Every reconcile interval here is a second or two."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from polar_billing_client.client import BillingClient

from dev.embedded import free_port
from polar_emulator.config import PRO_PRODUCT_ID, TEAM_PRODUCT_ID, EmulatorSettings
from shared.db import connect
from shared.db.migrate import migrate
from tests.conftest import Servers, drop_database, new_database
from tests.e2e.procs import ServiceProcess, base_env, start_service
from tests.e2e.stack import eventually, reset_webhook_consumer
from tests.support.emulator import TOKEN, admin, start_emulator

pytestmark = pytest.mark.asyncio(loop_scope="function")

ENTITLED = ("active", "trialing", "past_due")
PLAN_OF = {PRO_PRODUCT_ID: "pro", TEAM_PRODUCT_ID: "team"}


@dataclass
class Org:
    """One Polar organization (an emulator), our database, ingress and billing in front of them."""

    db_url: str
    db: asyncpg.Connection
    emulator: ServiceProcess
    env: dict[str, str]
    dir: Path
    ingress_port: int
    ingress: ServiceProcess | None = None
    billing: ServiceProcess | None = None

    def start_ingress(self) -> None:
        self.ingress = start_service("ingress", self.env, self.dir, port=self.ingress_port)
        self.ingress.wait_ready()

    def start_billing(self, **extra: str) -> None:
        self.billing = start_service("billing", {**self.env, **extra}, self.dir)
        self.billing.wait_ready()

    def polar(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.emulator.url}{path}", headers={"Authorization": f"Bearer {TOKEN}"},
                             timeout=30, **kwargs)

    def polar_plans(self) -> dict[str, tuple[str, str | None]]:
        """Each external customer's effective plan at Polar: (plan, status), free when nothing entitles them."""
        out: dict[str, tuple[str, str | None]] = {}
        page = 1
        while True:
            body = self.polar("GET", "/v1/subscriptions/", params={"page": page, "limit": 100}).json()
            for s in body["items"]:
                user = (s.get("customer") or {}).get("external_id")
                if user and s["status"] in ENTITLED:
                    out[user] = (PLAN_OF[s["product_id"]], s["status"])
                elif user:
                    out.setdefault(user, ("free", None))
            if page >= body["pagination"]["max_page"]:
                return out
            page += 1

    async def our_plans(self) -> dict[str, tuple[str, str | None]]:
        rows = await self.db.fetch("SELECT user_id, plan, status, entitled FROM user_plan")
        return {r["user_id"]: (r["plan"], r["status"]) if r["entitled"] else ("free", None) for r in rows}


@pytest.fixture
async def org(servers: Servers, tmp_path: Path) -> AsyncIterator[Org]:
    await reset_webhook_consumer(servers.nats_url)
    db_url = await new_database(servers)
    await migrate(db_url)
    ingress_port = free_port()
    public = f"http://127.0.0.1:{ingress_port}"
    emulator = start_emulator(tmp_path, webhook_url=f"{public}/webhooks/polar", webhook_backoff_base="0.01")
    env = base_env(NATS_URL=servers.nats_url, DATABASE_URL=db_url, POLAR_ACCESS_TOKEN=TOKEN,
                   POLAR_SERVER=emulator.url, POLAR_PRO_PRODUCT_ID=PRO_PRODUCT_ID,
                   POLAR_TEAM_PRODUCT_ID=TEAM_PRODUCT_ID, POLAR_WEBHOOK_SECRET=EmulatorSettings().webhook_secret,
                   PUBLIC_BASE_URL=public, POLAR_RECONCILE_INTERVAL_SECONDS="1.5",
                   POLAR_TOKENS_METER_ID=EmulatorSettings().tokens_meter_id)
    db = await connect(db_url)
    o = Org(db_url, db, emulator, env, tmp_path, ingress_port)
    yield o
    for svc in (o.billing, o.ingress):
        if svc is not None:
            svc.stop_or_kill()
    if o.billing is not None:
        assert TOKEN not in o.billing.log.read_text()
    emulator.stop_or_kill()
    await db.close()
    await drop_database(servers, db_url)


def cli(org: Org, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**base_env(NATS_URL=org.env["NATS_URL"], DATABASE_URL=org.db_url), "STACK_DATA_DIR": str(org.dir)}
    return subprocess.run([sys.executable, "-m", "ops.cli", "reconcile", *args], env=env, check=False, capture_output=True,
                          text=True, timeout=120)


async def sweeps_done(db: asyncpg.Connection, kind: str = "sweep") -> int:
    return await db.fetchval("SELECT count(*) FROM reconcile_sweeps WHERE kind = $1 AND finished_at IS NOT NULL "
                             "AND error IS NULL", kind)


async def test_an_organization_with_subscriptions_and_no_webhooks_is_imported_on_first_start(org: Org) -> None:
    seeded = admin(org.emulator, "POST", "seed", json={
        "count": 300, "prefix": "imp-", "without_external_id": 3,
        "mix": {"team": 60, "trialing": 10, "canceling": 10, "past_due": 20, "canceled": 40, "unpaid": 5}}).json()
    # A webhook during the import: the listing is read, then held; meanwhile the user cancels at Polar and the
    # webhook of it is applied. The held (older) listing must not take the cancellation back.
    first = next(c for c in seeded["customers"] if c["kind"] == "pro")
    admin(org.emulator, "POST", "faults", json={"path": "/v1/subscriptions/", "kind": "hold", "count": 1,
                                                "hang_seconds": 4})
    org.start_ingress()
    org.start_billing()
    await asyncio.sleep(1)  # the backfill has read the page that holds `first` and waits for the held answer
    assert admin(org.emulator, "POST", "simulate/revoke", json={"external_customer_id": first["external_id"]}).is_success

    async def revoked() -> bool:
        return await org.db.fetchval("SELECT status FROM subscriptions WHERE id = $1",
                                     first["subscription_id"]) == "canceled"

    await eventually(revoked, timeout=30)
    await eventually(lambda: sweeps_done(org.db, "backfill"), timeout=60)
    expected = org.polar_plans()
    assert len(expected) == 300 and expected[first["external_id"]] == ("free", None)
    ours = await org.our_plans()
    for user, plan in expected.items():
        assert ours.get(user, ("free", None)) == plan, user
    # Customers without an external id are kept, mapped to nobody, and said once.
    assert await org.db.fetchval("SELECT count(*) FROM customers WHERE user_id IS NULL") == 3
    assert org.billing is not None
    log = org.billing.log.read_text()
    assert log.count("reconcile.customers_without_external_id") == 1
    metrics = httpx.get(f"{org.billing.url}/metrics/").text
    assert "billing_polar_customers_without_external_id 3.0" in metrics
    # What the chat service sees, for a few of them: the plan and its limits.
    client = await BillingClient.connect(org.env["NATS_URL"])
    try:
        for c in seeded["customers"][:300:25]:
            status = await client.status(c["external_id"])
            plan, sub_status = expected[c["external_id"]]
            assert status.plan == plan and (sub_status is None or status.status == sub_status), c
    finally:
        await client.close()


async def changed_events(nats_url: str, since: float) -> list[dict]:
    nc = await nats.connect(nats_url)
    out = []
    try:
        sub = await nc.jetstream().subscribe("billing.event.subscription.changed", ordered_consumer=True)
        try:
            while True:
                msg = await sub.next_msg(timeout=1.5)
                if msg.metadata.timestamp.timestamp() >= since:
                    out.append(json.loads(msg.data))
        except nats.errors.TimeoutError:
            pass
    finally:
        await nc.close()
    return out


async def test_drift_made_at_polar_without_a_webhook_is_repaired_with_its_row_and_event(org: Org) -> None:
    users = {kind: f"usr_drift_{kind}_{uuid.uuid4().hex[:6]}" for kind in ("cancel", "plan", "revoke")}
    org.start_ingress()
    org.start_billing()
    for user in users.values():
        admin(org.emulator, "POST", "simulate/purchase", json={"external_customer_id": user,
                                                                "product_id": PRO_PRODUCT_ID})

    async def all_pro() -> bool:
        ours = await org.our_plans()
        return all(ours.get(u) == ("pro", "active") for u in users.values())

    await eventually(all_pro, timeout=30)
    since = time.time()
    done = await sweeps_done(org.db)
    webhooks = len(admin(org.emulator, "GET", "webhooks").json()["webhooks"])
    for kind, body in (("cancel", {"cancel_at_period_end": True}), ("plan", {"product_id": TEAM_PRODUCT_ID}),
                       ("revoke", {"revoke": True})):
        assert admin(org.emulator, "PATCH", f"subscriptions/{users[kind]}", json=body).is_success
    assert len(admin(org.emulator, "GET", "webhooks").json()["webhooks"]) == webhooks  # no webhook: drift

    async def two_more_sweeps() -> bool:  # one sweep that started after the drift, finished
        return await sweeps_done(org.db) >= done + 2

    await eventually(two_more_sweeps, timeout=30)
    ours = await org.our_plans()
    assert ours[users["plan"]] == ("team", "active") and ours[users["revoke"]] == ("free", None)
    assert await org.db.fetchval("SELECT cancel_at_period_end FROM user_plan WHERE user_id = $1", users["cancel"])
    repairs = {r["user_id"]: r for r in await org.db.fetch(
        "SELECT * FROM reconcile_repairs WHERE source = 'reconcile' AND user_id = ANY($1::text[])",
        list(users.values()))}
    assert set(repairs) == set(users.values())
    assert set(repairs[users["cancel"]]["fields"]) == {"cancel_at_period_end", "ends_at"}
    assert "product_id" in repairs[users["plan"]]["fields"]
    assert "status" in repairs[users["revoke"]]["fields"]
    assert repairs[users["revoke"]]["before"]["status"] == "active"
    assert repairs[users["revoke"]]["after"]["status"] == "canceled"
    events = {e["user_id"]: e for e in await changed_events(org.env["NATS_URL"], since)}
    assert events[users["cancel"]]["cancel_at_period_end"] is True
    assert (events[users["plan"]]["old_plan"], events[users["plan"]]["new_plan"]) == ("pro", "team")
    assert (events[users["revoke"]]["new_plan"], events[users["revoke"]]["status"]) == ("free", None)
    assert all(e["webhook_id"].startswith("reconcile:") for e in events.values())
    # A sweep that finds nothing repairs nothing; the operator can run one and read what was repaired.
    before = await org.db.fetchval("SELECT count(*) FROM reconcile_repairs")
    run = cli(org, "run", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["repairs"] == 0 and json.loads(run.stdout)["compared"] >= 3
    assert await org.db.fetchval("SELECT count(*) FROM reconcile_repairs") == before
    shown = cli(org, "repairs", "--json")
    assert shown.returncode == 0 and {r["user_id"] for r in json.loads(shown.stdout)} >= set(users.values())
    status = cli(org, "status")
    assert status.returncode == 0 and "webhook endpoint" in status.stdout and "enabled" in status.stdout


async def _at_least(db: asyncpg.Connection, n: int) -> bool:
    return await sweeps_done(db) >= n


async def test_an_endpoint_polar_disabled_is_enabled_again_and_what_it_missed_arrives_once(org: Org) -> None:
    users = [f"usr_heal_{i}_{uuid.uuid4().hex[:6]}" for i in range(6)]
    org.start_ingress()
    org.start_billing(POLAR_RECONCILE_INTERVAL_SECONDS="2")
    for u in users:
        admin(org.emulator, "POST", "simulate/purchase", json={"external_customer_id": u, "product_id": PRO_PRODUCT_ID})

    async def all_pro() -> bool:
        ours = await org.our_plans()
        return all(ours.get(u) == ("pro", "active") for u in users)

    await eventually(all_pro, timeout=30)
    # Ingress goes down for longer than Polar's (compressed) retries: every event fails, Polar disables the endpoint
    # after 10 in a row, and marks what is still pending skipped.
    assert org.ingress is not None
    org.ingress.stop_or_kill()
    for u in users:
        admin(org.emulator, "POST", "simulate/cancel", json={"external_customer_id": u})
    for u in users[:3]:
        admin(org.emulator, "POST", "simulate/revoke", json={"external_customer_id": u})

    def disabled() -> bool:
        return admin(org.emulator, "GET", "webhook-endpoint").json()["endpoint"]["enabled"] is False

    deadline = time.monotonic() + 60
    while not disabled():
        assert time.monotonic() < deadline, admin(org.emulator, "GET", "webhook-endpoint").json()
        await asyncio.sleep(0.2)
    state = admin(org.emulator, "GET", "webhook-endpoint").json()
    assert state["events"]["failed"] >= 10
    # Events emitted while the endpoint is off are skipped, never sent: only the sweep can bring them.
    for u in users[3:]:
        admin(org.emulator, "POST", "simulate/revoke", json={"external_customer_id": u})
    assert admin(org.emulator, "GET", "webhook-endpoint").json()["events"]["skipped"] >= 3
    org.start_ingress()

    async def healed() -> bool:
        at_polar, ours = org.polar_plans(), await org.our_plans()
        return not disabled() and all(ours.get(u) == at_polar[u] for u in users)

    await eventually(healed, timeout=60, every=0.5)
    ours = await org.our_plans()
    assert all(ours[u] == ("free", None) for u in users)
    # Every failed event was redelivered once, with its original webhook-id, and applied once.
    failed = {d["webhook_event"]["id"] for d in admin(org.emulator, "GET", "deliveries").json()["deliveries"]
              if not d["succeeded"]}
    redelivered = {r["event_id"] for r in await org.db.fetch("SELECT event_id FROM redelivered_webhook_events")}
    assert failed and redelivered and redelivered <= failed

    async def all_applied() -> bool:
        rows = await org.db.fetch("SELECT webhook_id, status FROM webhook_log WHERE webhook_id = ANY($1::text[])",
                                  list(failed))
        return {r["webhook_id"] for r in rows} == failed and {r["status"] for r in rows} <= {"applied", "skipped"}

    try:
        await eventually(all_applied, timeout=30)
    except AssertionError:
        rows = {r["webhook_id"] for r in await org.db.fetch("SELECT webhook_id FROM webhook_log")}
        missing = failed - rows
        evs = {e["id"]: e for e in admin(org.emulator, "GET", "webhooks").json()["webhooks"]}
        raise AssertionError([(m, m in redelivered, {k: evs.get(m, {}).get(k) for k in ("type", "succeeded", "skipped")},
                               len(evs.get(m, {}).get("attempts", []))) for m in missing]) from None
    assert await org.db.fetchval("SELECT max(attempts) FROM webhook_log WHERE webhook_id = ANY($1::text[])",
                                 list(failed)) == 1  # each applied once: a repeat would be a duplicate
    health = await org.db.fetchrow("SELECT * FROM webhook_endpoint_health")
    assert health["enabled"] is True
    assert org.billing is not None
    assert "reconcile.webhook_endpoint_reenabled" in org.billing.log.read_text()


async def test_a_token_without_webhook_scopes_is_warned_once_and_the_rest_still_runs(org: Org) -> None:
    admin(org.emulator, "POST", "token-scopes", json={"scopes": ["subscriptions:read", "customers:read",
                                                                 "meters:read", "events:write", "checkouts:write",
                                                                 "customer_sessions:write"]})
    user = f"usr_scope_{uuid.uuid4().hex[:6]}"
    admin(org.emulator, "POST", "simulate/purchase", json={"external_customer_id": user, "product_id": PRO_PRODUCT_ID})
    org.start_billing()  # no ingress: the purchase reaches us only through the import
    await eventually(lambda: sweeps_done(org.db), timeout=30)
    await eventually(lambda: _at_least(org.db, 2), timeout=30)
    assert (await org.our_plans())[user] == ("pro", "active")
    assert org.billing is not None
    assert org.billing.log.read_text().count("reconcile.webhook_endpoint_no_scope") == 1
    assert 'billing_webhook_endpoint_checks_total{result="no_scope"}' in httpx.get(f"{org.billing.url}/metrics/").text


async def test_a_meter_missing_an_event_at_polar_is_reported_and_a_synced_one_is_not(org: Org) -> None:
    from polar_billing_client.contracts import UsageEvent
    from usage_sync import ledger
    from usage_sync.polar_sync import to_polar

    synced, drifted = f"usr_meter_ok_{uuid.uuid4().hex[:6]}", f"usr_meter_bad_{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    events = [UsageEvent(event_id=f"m-{u}-{i}", user_id=u, thread_id="t", model="gpt-4o", input_tokens=100 + i,
                         output_tokens=10, occurred_at=now) for u in (synced, drifted) for i in range(3)]
    await ledger.record(org.db, events)
    rows = await org.db.fetch("SELECT * FROM usage_events WHERE user_id = ANY($1::text[]) ORDER BY event_id",
                              [synced, drifted])
    sent = [to_polar(r, "ai_usage", now) for r in rows if r["event_id"] != f"m-{drifted}-2"]  # one lost
    assert org.polar("POST", "/v1/events/ingest", json={"events": sent}).json()["inserted"] == 5
    await org.db.execute("UPDATE usage_events SET sync_status = 'synced' WHERE user_id = ANY($1::text[])",
                         [synced, drifted])
    org.start_billing()
    await eventually(lambda: _at_least(org.db, 1), timeout=30)
    drifts = {r["user_id"]: r for r in await org.db.fetch("SELECT * FROM meter_drifts")}
    assert set(drifts) == {drifted}
    assert drifts[drifted]["ledger_tokens"] - drifts[drifted]["polar_tokens"] == 112  # 102 + 10 never arrived
    await eventually(lambda: _at_least(org.db, 3), timeout=30)
    assert org.billing is not None
    assert org.billing.log.read_text().count("reconcile.meter_drift") == 1  # once per user and period
    shown = cli(org, "drifts")
    assert shown.returncode == 0 and drifted in shown.stdout and synced not in shown.stdout


async def test_an_event_polar_gave_up_on_while_the_endpoint_stayed_enabled_is_redelivered(org: Org) -> None:
    admin(org.emulator, "POST", "webhook-endpoint", json={"disable_after": 1000})  # Polar never disables it here
    user = f"usr_gaveup_{uuid.uuid4().hex[:6]}"
    org.start_ingress()
    org.start_billing(POLAR_RECONCILE_INTERVAL_SECONDS="1")
    admin(org.emulator, "POST", "simulate/purchase", json={"external_customer_id": user, "product_id": PRO_PRODUCT_ID})
    await eventually(lambda: _plan_is(org, user, ("pro", "active")), timeout=30)
    assert org.ingress is not None
    org.ingress.stop_or_kill()
    sent = admin(org.emulator, "POST", "simulate/cancel", json={"external_customer_id": user}).json()["webhooks"]
    gave_up = admin(org.emulator, "GET", "webhooks", params={"wait": 30}).json()["webhooks"]
    ids = {w["webhook_id"] for w in sent}
    mine = [(w["succeeded"], len(w["attempts"])) for w in gave_up if w["id"] in ids]
    assert len(mine) == len(ids) and all(s is False and n == 10 for s, n in mine), mine
    assert admin(org.emulator, "GET", "webhook-endpoint").json()["endpoint"]["enabled"] is True
    org.start_ingress()

    async def applied() -> bool:
        rows = await org.db.fetch("SELECT webhook_id FROM webhook_log WHERE webhook_id = ANY($1::text[]) "
                                  "AND status IN ('applied', 'skipped')", list(ids))
        return len(rows) == len(ids)

    await eventually(applied, timeout=60, every=0.5)
    assert {r["event_id"] for r in await org.db.fetch("SELECT event_id FROM redelivered_webhook_events")} >= ids


async def _plan_is(org: Org, user: str, plan: tuple[str, str | None]) -> bool:
    return (await org.our_plans()).get(user) == plan


async def test_polars_refusal_to_enable_the_endpoint_is_reported_plainly(org: Org) -> None:
    admin(org.emulator, "POST", "webhook-endpoint", json={"enabled": False, "reject_local_urls": True})
    org.start_ingress()
    org.start_billing()
    await eventually(lambda: _at_least(org.db, 1), timeout=30)
    health = await org.db.fetchrow("SELECT * FROM webhook_endpoint_health")
    assert health["enabled"] is False and health["note"].startswith("Polar refused to enable it: ")
    assert org.billing is not None
    line = next(json.loads(x) for x in org.billing.log.read_text().splitlines()
                if "reconcile.webhook_endpoint_enable_refused" in x)
    assert line["level"] == "error" and line["reason"], line
    assert admin(org.emulator, "GET", "webhook-endpoint").json()["endpoint"]["enabled"] is False
    status = cli(org, "status")
    assert "DISABLED" in status.stdout and "refused" in status.stdout
