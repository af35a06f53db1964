"""DATABASE_READ_URL: billing's check, status and usage read a real streaming replica (pg_basebackup of an embedded
PostgreSQL), reserve reads the primary, and a replica that falls behind or goes away costs no check its answer.

The replica's replay is paused to tell the two apart: a write to the primary is then visible to reserve only, until
the replica's lag passes DATABASE_READ_MAX_LAG_SECONDS."""
from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
from polar_billing_client.client import BillingClient

from dev.embedded import EmbeddedPostgres
from shared.db.migrate import migrate
from shared.periods import month_of
from tests.conftest import Servers
from tests.e2e.procs import start_service
from tests.e2e.stack import eventually, reset_webhook_consumer, stack_env

USER = "usr_replica"
FREE_TOKENS = 100_000
MAX_LAG = 3.0  # seconds


def on_primary(metrics: str, reason: str) -> float:
    line = next(line for line in metrics.splitlines()
                if line.startswith(f'billing_replica_reads_on_primary_total{{reason="{reason}"}} '))
    return float(line.split()[1])


async def tokens_used(conn: asyncpg.Connection) -> int | None:
    return await conn.fetchval("SELECT used FROM usage_counters WHERE user_id = $1 AND limit_name = 'tokens_per_month'",
                               USER)


async def test_checks_read_the_replica_reserves_the_primary_and_a_lost_replica_costs_nothing(
        servers: Servers, tmp_path: Path) -> None:
    primary_pg = EmbeddedPostgres(tmp_path / "primary", durable=False)
    primary_url = primary_pg.start()
    replica_pg = None
    try:
        await migrate(primary_url)
        start, end = month_of(datetime.now(UTC))
        primary = await asyncpg.connect(primary_url)
        await primary.execute("INSERT INTO usage_counters (user_id, limit_name, period_start, period_end, used) "
                              "VALUES ($1, 'tokens_per_month', $2, $3, 1000)", USER, start, end)
        replica_pg = primary_pg.replica(tmp_path / "replica")
        replica_url = replica_pg.start()
        replica = await asyncpg.connect(replica_url)
        assert await replica.fetchval("SELECT pg_is_in_recovery()")
        assert await tokens_used(replica) == 1000

        await reset_webhook_consumer(servers.nats_url)
        (tmp_path / "billing").mkdir()
        billing = start_service("billing", stack_env(servers.nats_url, primary_url, DATABASE_READ_URL=replica_url,
                                          DATABASE_READ_MAX_LAG_SECONDS=str(MAX_LAG)),
                                tmp_path / "billing")
        billing.wait_ready()
        client = await BillingClient.connect(servers.nats_url)
        try:
            assert (await client.check(USER)).limits["tokens_per_month"].used == 1000

            # A fresh write replayed (the lag is measured from the last one), then the replica stops replaying: the
            # primary's new count reaches reserve, not check or status, until the replica is MAX_LAG behind.
            fresh = time.monotonic()  # the lag counts from this write's commit, a moment later
            await primary.execute("UPDATE usage_counters SET used = 1500 WHERE user_id = $1", USER)

            async def replayed() -> bool:
                return await tokens_used(replica) == 1500
            await eventually(replayed)
            await replica.execute("SELECT pg_wal_replay_pause()")
            await primary.execute("UPDATE usage_counters SET used = $2 WHERE user_id = $1", USER, FREE_TOKENS - 10)
            check = await client.check(USER, estimated_tokens=500)
            assert check.allowed and check.limits["tokens_per_month"].used == 1500
            assert (await client.status(USER)).limits["tokens_per_month"].used == 1500
            reserve = await client.reserve(USER, estimated_tokens=500)
            assert not reserve.allowed and reserve.limits["tokens_per_month"].used == FREE_TOKENS - 10
            assert reserve.reservation_id is None
            assert time.monotonic() - fresh < MAX_LAG  # all of the above was the replica's answer within the bound

            async def from_primary() -> bool:
                return not (await client.check(USER, estimated_tokens=500)).allowed
            await eventually(from_primary, timeout=MAX_LAG + 5)  # the replica still paused: too far behind now
            assert time.monotonic() - fresh >= MAX_LAG
            lagging = on_primary(httpx.get(f"{billing.url}/metrics", timeout=5, follow_redirects=True).text, "lagging")
            assert lagging >= 1

            await replica.execute("SELECT pg_wal_replay_resume()")

            async def caught_up() -> bool:  # the replica answers again, with the primary's count
                check = await client.check(USER, estimated_tokens=500)
                metrics = httpx.get(f"{billing.url}/metrics", timeout=5, follow_redirects=True).text
                return not check.allowed and "billing_replica_lag_seconds 0.0" in metrics.splitlines()
            await eventually(caught_up, timeout=10)

            # The replica goes away: checks are answered from the primary, and the operator can see it.
            await replica.close()
            replica_pg.stop()
            replica_pg = None
            await primary.execute("UPDATE usage_counters SET used = 2000 WHERE user_id = $1", USER)
            for _ in range(5):
                check = await client.check(USER, timeout=5)
                assert check.allowed and check.limits["tokens_per_month"].used == 2000
            metrics = httpx.get(f"{billing.url}/metrics", timeout=5, follow_redirects=True).text
            assert on_primary(metrics, "unreachable") >= 5
            assert "reads.replica_unavailable" in billing.log.read_text()
        finally:
            await client.close()
            billing.stop()
        await primary.close()
    finally:
        if replica_pg is not None:
            replica_pg.stop()
        primary_pg.stop()
