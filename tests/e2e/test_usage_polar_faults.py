"""usage-sync against Polar's failure modes (the emulator's faults): every event reaches Polar exactly once."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.e2e.procs import ROOT
from tests.e2e.stack import eventually
from tests.e2e.usage_stack import make_events, publish, start_usage_sync
from tests.support.emulator import admin

USERS = ["usr_a", "usr_b", "usr_c"]

def ingested(emulator) -> Counter:
    return Counter(e["external_id"] for e in admin(emulator, "GET", "events").json()["events"])


async def synced(db, n: int) -> None:
    async def check() -> bool:
        return await db.fetchval("SELECT count(*) FROM usage_events WHERE sync_status = 'synced'") == n

    await eventually(check, timeout=60, every=0.2)


def ingest_requests(emulator) -> list[dict]:
    return [r for r in admin(emulator, "GET", "events").json()["requests"] if r["path"] == "/v1/events/ingest"]


async def test_429_is_waited_out_for_retry_after_then_the_batch_is_resent(usage, tmp_path) -> None:
    emulator, env, client, db = usage
    admin(emulator, "POST", "faults", json={"path": "/v1/events/ingest", "kind": "429", "retry_after": 2})
    start_usage_sync(env, tmp_path / "us")
    events = make_events(300, USERS, tag="rl")
    await publish(client, events)
    await synced(db, 300)
    reqs = ingest_requests(emulator)
    assert reqs[0]["status"] == 429 and reqs[1]["status"] == 200
    assert reqs[1]["at"] - reqs[0]["at"] >= 2.0  # it waited at least Retry-After
    assert set(ingested(emulator).values()) == {1} and len(ingested(emulator)) == 300


@pytest.mark.parametrize("fault", [{"kind": "500", "count": 3}, {"kind": "502", "count": 1},
                                   {"kind": "timeout", "count": 1, "hang_seconds": 12},
                                   {"kind": "drop", "count": 2}])
async def test_server_errors_and_timeouts_are_retried_with_the_same_ids(usage, tmp_path, fault) -> None:
    emulator, env, client, db = usage
    admin(emulator, "POST", "faults", json={"path": "/v1/events/ingest", **fault})
    start_usage_sync(env, tmp_path / "us")
    events = make_events(400, USERS, tag=f"f{fault['kind']}")
    await publish(client, events)
    await synced(db, 400)
    got = ingested(emulator)
    assert set(got) == {e.event_id for e in events} and set(got.values()) == {1}


async def test_a_poison_event_in_a_batch_of_500_is_quarantined_and_the_499_others_are_inserted(usage, tmp_path) -> None:
    emulator, env, client, db = usage
    events = make_events(500, USERS, tag="poison")
    poison = events[137].event_id
    admin(emulator, "POST", "ingest-rules", json={"value": poison})  # Polar refuses this one event
    start_usage_sync(env, tmp_path / "us", POLAR_FLUSH_INTERVAL_SECONDS="2")
    await publish(client, events)
    await synced(db, 499)

    async def quarantined() -> bool:
        return await db.fetchval("SELECT count(*) FROM usage_events WHERE sync_status = 'quarantined'") == 1

    await eventually(quarantined)
    row = await db.fetchrow("SELECT event_id, sync_error FROM usage_events WHERE sync_status = 'quarantined'")
    assert row["event_id"] == poison and row["sync_error"].startswith("Polar 422:")
    got = ingested(emulator)
    assert len(got) == 499 and poison not in got and set(got.values()) == {1}

    # The operator sees it, fixes the cause, and re-sends it.
    cli = [sys.executable, "-m", "ops.cli", "usage"]
    listing = subprocess.run([*cli, "quarantined", "--json"], env=env, cwd=ROOT, check=False, capture_output=True, text=True,
                             timeout=30)
    assert [r["event_id"] for r in json.loads(listing.stdout)] == [poison]
    admin(emulator, "DELETE", "faults")
    resend = subprocess.run([*cli, "resend", "--all"], env=env, cwd=ROOT, check=False, capture_output=True, text=True, timeout=30)
    assert "1 event(s) back in the outbox" in resend.stdout
    await synced(db, 500)
    assert ingested(emulator)[poison] == 1


async def test_a_crash_between_polars_200_and_the_synced_commit_resends_as_duplicates(usage, tmp_path) -> None:
    emulator, env, client, db = usage
    admin(emulator, "POST", "faults", json={"path": "/v1/events/ingest", "kind": "hold", "hang_seconds": 30})
    doomed = start_usage_sync(env, tmp_path / "doomed")
    events = make_events(200, USERS, tag="crash")
    await publish(client, events)

    async def polar_has_them() -> bool:  # Polar inserted them; its answer is being held
        return len(ingested(emulator)) == 200

    await eventually(polar_has_them, timeout=30)
    doomed.proc.kill()  # kill -9 before the "synced" commit
    doomed.proc.wait(10)
    assert await db.fetchval("SELECT count(*) FROM usage_events WHERE sync_status = 'synced'") == 0
    admin(emulator, "DELETE", "faults")
    start_usage_sync(env, tmp_path / "again")
    await synced(db, 200)
    batches = admin(emulator, "GET", "events").json()["batches"]
    assert sum(b["inserted"] for b in batches) == 200 and sum(b["duplicates"] for b in batches) == 200
    assert set(ingested(emulator).values()) == {1}


async def test_two_usage_sync_processes_never_send_an_event_twice(usage, tmp_path) -> None:
    emulator, env, client, db = usage
    a = start_usage_sync(env, tmp_path / "a", POLAR_INGEST_BATCH_SIZE="100")
    b = start_usage_sync(env, tmp_path / "b", POLAR_INGEST_BATCH_SIZE="100")
    events = make_events(3000, USERS, tag="two")
    await publish(client, events)
    await synced(db, 3000)
    batches = admin(emulator, "GET", "events").json()["batches"]
    assert sum(b["duplicates"] for b in batches) == 0  # no row was ever in flight twice
    assert set(ingested(emulator).values()) == {1} and len(ingested(emulator)) == 3000
    tokens = await db.fetchval("SELECT sum(used) FROM usage_counters WHERE limit_name = 'tokens_per_month'")
    assert tokens == sum(e.billable_tokens for e in events)
    logs = a.log.read_text() + b.log.read_text()
    assert logs.count('"event": "polar.ingested"') == len(batches)
    assert '"service": "usage-sync"' in a.log.read_text() and time.time()
    assert a.stop() == 0 and b.stop() == 0
