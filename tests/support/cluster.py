"""A 3-node JetStream cluster for the tests, and the workload the scale-out tests drive through it: usage events
through the chat client, Polar webhook lifecycles through ingress (retried as Polar retries), and what the
database and the emulator must hold afterwards."""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
from nats.js import JetStreamContext
from polar_billing_client.client import BillingClient
from polar_billing_client.contracts import UsageEvent

from dev.embedded import EmbeddedNats, EmbeddedNatsCluster
from shared import topology
from tests.e2e.stack import SECRET
from tests.integration.test_billing_webhooks import apply, lifecycle, snapshot
from tests.support.emulator import admin
from tests.support.webhooks import body_of, sign


@contextmanager
def nats_cluster(data_dir: Path, size: int = 3) -> Iterator[EmbeddedNatsCluster]:
    cluster = EmbeddedNatsCluster(data_dir, size, sync_always=False)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def leader_of(js: JetStreamContext, stream: str, timeout: float = 30.0) -> str:
    """The server that leads `stream` now (JetStream stream info `cluster.leader`), once there is one."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = await js.stream_info(stream)
            if info.cluster and info.cluster.leader:
                return info.cluster.leader
        except (TimeoutError, nats.errors.Error):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{stream} has no leader after {timeout}s")
        await asyncio.sleep(0.2)


async def kill_leader(cluster: EmbeddedNatsCluster, js: JetStreamContext, stream: str) -> EmbeddedNats:
    """SIGKILL the node that leads `stream`: no step-down, the others must elect a new leader."""
    node = cluster.node(await leader_of(js, stream))
    node.kill()
    return node


async def bring_back(cluster: EmbeddedNatsCluster, node: EmbeddedNats) -> None:
    """Restart a killed node on its ports and data, and wait until it has caught up."""
    await asyncio.to_thread(node.start)
    await asyncio.to_thread(cluster.wait_healthy, 60.0)


# --- usage ---------------------------------------------------------------------------------------------------------
async def publish_usage(client: BillingClient, events: Sequence[UsageEvent], concurrency: int = 100) -> None:
    """Through the client's own retry (same event id on every attempt): nothing here retries on its behalf."""
    sem = asyncio.Semaphore(concurrency)

    async def one(e: UsageEvent) -> None:
        async with sem:
            await client.publish_usage(e)

    await asyncio.gather(*(one(e) for e in events))


def with_duplicates(events: Sequence[UsageEvent], seed: int, share: float = 0.15) -> list[UsageEvent]:
    rng = random.Random(seed)
    sends = list(events) + rng.sample(list(events), int(len(events) * share))
    rng.shuffle(sends)
    return sends


async def usage_settled(db: asyncpg.Connection, events: Sequence[UsageEvent]) -> bool:
    return await db.fetchval("SELECT count(*) FROM usage_events WHERE sync_status = 'synced'") == len(events)


async def assert_usage_exact(db: asyncpg.Connection, emulator: Any, events: Sequence[UsageEvent]) -> None:
    assert await db.fetchval("SELECT count(*) FROM usage_events") == len(events)
    users = sorted({e.user_id for e in events})
    sums = "SELECT sum(used) FROM usage_counters WHERE limit_name = $1 AND user_id = ANY($2::text[])"
    tokens = await db.fetchval(sums, "tokens_per_month", users)
    messages = await db.fetchval(sums, "messages_per_day", users)
    assert tokens == sum(e.billable_tokens for e in events)
    assert messages == len(events)
    sent = [e["external_id"] for e in admin(emulator, "GET", "events").json()["events"]]
    assert len(sent) == len(events) and set(sent) == {e.event_id for e in events}


# --- webhooks ------------------------------------------------------------------------------------------------------
def webhook_deliveries(tags: Sequence[str], seed: int) -> list[tuple[str, dict[str, Any]]]:
    """Each tag's lifecycle (16 webhooks), a fifth of them sent twice, all shuffled: Polar guarantees no order."""
    rng = random.Random(seed)
    deliveries = [d for tag in tags for d in lifecycle(tag) for _ in range(2 if rng.random() < 0.2 else 1)]
    rng.shuffle(deliveries)
    return deliveries


async def post_as_polar(http: httpx.AsyncClient, url: str, deliveries: Sequence[tuple[str, dict[str, Any]]],
                        concurrency: int = 16) -> int:
    """Signed POSTs, each retried with the same webhook-id until a 2xx, as Polar does after a 503 or a reset
    connection (only faster). Returns how many attempts were refused or failed."""
    sem = asyncio.Semaphore(concurrency)
    refused = 0

    async def one(webhook_id: str, payload: dict[str, Any]) -> None:
        nonlocal refused
        body = body_of(payload)
        async with sem:
            for _ in range(200):
                try:
                    resp = await http.post(url, content=body, headers=sign(SECRET, body, webhook_id), timeout=10)
                    if resp.status_code in (200, 202):
                        return
                    assert resp.status_code == 503, resp.text
                except httpx.TransportError:
                    pass
                refused += 1
                await asyncio.sleep(0.2)
            raise AssertionError(f"{webhook_id} never accepted")

    await asyncio.gather(*(one(w, p) for w, p in deliveries))
    return refused


async def expected_lifecycle_rows(db: asyncpg.Connection) -> dict[str, list[dict[str, Any]]]:
    """One lifecycle applied in order, once, by billing's own apply path: what every delivered lifecycle must equal."""
    async with db.transaction():
        for webhook_id, payload in lifecycle("expected"):
            await apply(db, payload, webhook_id)
        return await snapshot(db, "expected")


def _ids(tags: Sequence[str]) -> list[str]:
    return [w for tag in tags for w, _ in lifecycle(tag)]


async def webhooks_settled(db: asyncpg.Connection, tags: Sequence[str]) -> bool:
    done = await db.fetchval("SELECT count(*) FROM webhook_log WHERE status <> 'received' "
                             "AND webhook_id = ANY($1::text[])", _ids(tags))
    return done == len(_ids(tags))


async def assert_lifecycles_equal(db: asyncpg.Connection, tags: Sequence[str],
                                  expected: dict[str, list[dict[str, Any]]]) -> None:
    """Every lifecycle ends in the rows of the undisturbed one, each webhook applied by one committed attempt."""
    for tag in tags:
        assert await snapshot(db, tag) == expected, tag
    once = await db.fetchval("SELECT count(*) FROM webhook_log WHERE webhook_id = ANY($1::text[]) "
                             "AND status = 'applied' AND attempts = 1", _ids(tags))
    assert once == len(_ids(tags))


async def dead_letters_stored(js: JetStreamContext) -> int:
    return (await js.stream_info(topology.DEAD_LETTERS.name)).state.messages


async def assert_nothing_dead_lettered(db: asyncpg.Connection, js: JetStreamContext, before: int = 0) -> None:
    """No row in this test's database, and no message added to DEAD_LETTERS since `before` (a shared server's)."""
    rows = await db.fetch("SELECT source, subject, reason FROM dead_letters")
    assert rows == [], [dict(r) for r in rows[:5]]
    assert await dead_letters_stored(js) == before
