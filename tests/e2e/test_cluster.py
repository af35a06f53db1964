"""The stack on a 3-node JetStream cluster with R3 streams: the node leading USAGE, then the one leading
POLAR_WEBHOOKS, is killed (SIGKILL) mid-stream and brought back; nothing is lost, doubled or dead-lettered."""
from __future__ import annotations

import asyncio

import httpx
import nats
from polar_billing_client.client import BillingClient

from shared import topology
from shared.db import connect
from tests.conftest import Servers
from tests.e2e.procs import ServiceProcess, start_service
from tests.e2e.stack import eventually, stack_env
from tests.e2e.usage_stack import make_events, usage_env
from tests.support.cluster import (
    assert_lifecycles_equal,
    assert_nothing_dead_lettered,
    assert_usage_exact,
    bring_back,
    expected_lifecycle_rows,
    kill_leader,
    leader_of,
    nats_cluster,
    post_as_polar,
    publish_usage,
    usage_settled,
    webhook_deliveries,
    webhooks_settled,
    with_duplicates,
)
from tests.support.emulator import start_emulator

USERS = [f"usr_cl{i}" for i in range(40)]
EVENTS = 16_000  # distinct usage events; a quarter of them sent twice: 20,000 publishes
LIFECYCLES = 50  # Polar webhook lifecycles of 16 events each; a fifth sent twice


def quarters(items: list) -> list[list]:
    n = len(items)
    return [items[i * n // 4:(i + 1) * n // 4] for i in range(4)]


async def test_killing_the_usage_then_the_webhook_stream_leader_loses_and_doubles_nothing(
        servers: Servers, database_url: str, tmp_path) -> None:
    emulator = start_emulator(tmp_path)
    procs: list[ServiceProcess] = []
    with nats_cluster(tmp_path / "nats") as cluster:
        await topology.apply(cluster.url, replicas=3)
        nc = await nats.connect(topology.servers(cluster.url), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = nc.jetstream(timeout=5)
        client = await BillingClient.connect(cluster.url)
        db = await connect(database_url)
        try:
            for name in ("POLAR_WEBHOOKS", "USAGE"):
                info = await js.stream_info(name)
                assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
            # Polar is the emulator for usage-sync only: billing's rows must come from the webhooks alone.
            env = stack_env(cluster.url, database_url, NATS_STREAM_REPLICAS="3")
            ingress = start_service("ingress", env, tmp_path)
            billing = start_service("billing", env, tmp_path)
            usage_sync = start_service("usage-sync", usage_env(cluster.url, database_url, emulator,
                                                               NATS_STREAM_REPLICAS="3"), tmp_path)
            procs += [ingress, billing, usage_sync]
            for p in procs:
                p.wait_ready()
            expected_rows = await expected_lifecycle_rows(db)

            events = make_events(EVENTS, USERS, seed=31, tag="cl")
            usage_parts = quarters(with_duplicates(events, seed=32, share=0.25))
            tags = [f"cl{i}" for i in range(LIFECYCLES)]
            webhook_parts = quarters(webhook_deliveries(tags, seed=33))
            url = f"{ingress.url}/webhooks/polar"
            refused = 0
            async with httpx.AsyncClient() as http:
                async def traffic(i: int) -> None:
                    nonlocal refused
                    _, n = await asyncio.gather(publish_usage(client, usage_parts[i]),
                                                post_as_polar(http, url, webhook_parts[i]))
                    refused += n

                await traffic(0)
                for i, stream in ((1, topology.USAGE.name), (2, topology.POLAR_WEBHOOKS.name)):
                    killed = await kill_leader(cluster, js, stream)
                    await traffic(i)  # rides the election: the client and ingress retry with the same ids
                    assert await leader_of(js, stream) != killed.cluster.server_name  # type: ignore[union-attr]
                    await bring_back(cluster, killed)
                await traffic(3)
            print(f"\nwebhook attempts refused or cut off during the elections: {refused}")

            await eventually(lambda: usage_settled(db, events), timeout=180, every=0.5)
            await eventually(lambda: webhooks_settled(db, tags), timeout=120, every=0.5)
            await assert_usage_exact(db, emulator, events)
            await assert_lifecycles_equal(db, tags, expected_rows)
            await assert_nothing_dead_lettered(db, js)
            for p in procs:
                assert p.proc.poll() is None, f"{p.name} exited: {p.log.read_text()[-2000:]}"
        finally:
            for p in procs:
                p.stop_or_kill(10)
            await db.close()
            await client.close()
            await nc.close()
            emulator.stop_or_kill()
