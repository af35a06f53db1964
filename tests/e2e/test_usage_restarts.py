"""NATS and PostgreSQL restarted while usage streams in: totals still exact."""
from __future__ import annotations

import asyncio
from collections import Counter

import nats.errors
from polar_billing_client.client import BillingClient
from polar_billing_client.contracts import UsageEvent

from dev.embedded import EmbeddedNats, EmbeddedPostgres
from shared.db import connect
from shared.db.migrate import migrate
from tests.e2e.stack import eventually
from tests.e2e.usage_stack import make_events, start_usage_sync, stop_all, usage_env
from tests.support.emulator import admin, start_emulator


async def publish_with_retries(client: BillingClient, events: list[UsageEvent]) -> None:
    """What a chat service does: retry a publish that was not confirmed, with the same event id."""
    for e in events:
        while True:
            try:
                await client.publish_usage(e)
                break
            except (TimeoutError, nats.errors.Error, OSError):
                await asyncio.sleep(0.2)


async def test_nats_and_postgres_restarted_mid_stream_lose_and_double_nothing(tmp_path) -> None:
    nats_server = EmbeddedNats(tmp_path / "nats", sync_always=False)
    pg = EmbeddedPostgres(tmp_path / "pg", durable=False)
    nats_url, db_url = nats_server.start(), pg.start()
    await migrate(db_url)
    (tmp_path / "emulator").mkdir()
    emulator = start_emulator(tmp_path / "emulator")
    env = usage_env(nats_url, db_url, emulator)
    client: BillingClient | None = None
    try:
        start_usage_sync(env, tmp_path / "us")
        client = BillingClient(await nats.connect(nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2),
                               publish_timeout=2.0)
        events = make_events(3000, ["usr_x", "usr_y"], tag="restart")
        batches = [events[i:i + 100] for i in range(0, len(events), 100)]

        async def producer() -> None:
            for b in batches:
                await publish_with_retries(client, b)
                await asyncio.sleep(0.05)

        producing = asyncio.create_task(producer())
        await asyncio.sleep(0.4)
        nats_server.stop()
        await asyncio.sleep(1.0)
        nats_server.start()
        await asyncio.sleep(0.5)
        pg.stop()
        await asyncio.sleep(1.0)
        pg.start()
        await producing

        db = await connect(db_url)
        try:
            async def all_synced() -> bool:
                return await db.fetchval("SELECT count(*) FROM usage_events WHERE sync_status = 'synced'") == 3000

            await eventually(all_synced, timeout=120, every=0.5)
            tokens = await db.fetchval("SELECT sum(used) FROM usage_counters WHERE limit_name = 'tokens_per_month'")
            messages = await db.fetchval("SELECT sum(used) FROM usage_counters WHERE limit_name = 'messages_per_day'")
            assert tokens == sum(e.billable_tokens for e in events)
            assert messages == 3000
        finally:
            await db.close()
        got = Counter(e["external_id"] for e in admin(emulator, "GET", "events").json()["events"])
        assert len(got) == 3000 and set(got.values()) == {1}
    finally:
        stop_all()
        if client is not None:
            await client.nc.close()
        emulator.stop_or_kill()
        nats_server.stop()
        pg.stop()
