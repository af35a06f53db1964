"""usage-sync as a process against the session's NATS, a database of its own and the Polar emulator."""
from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from polar_billing_client.client import BillingClient
from polar_billing_client.contracts import UsageEvent

from shared import topology
from tests.e2e.procs import ServiceProcess, base_env, start_service
from tests.e2e.stack import reset_consumer
from tests.support.emulator import TOKEN


def usage_env(nats_url: str, database_url: str, emulator: ServiceProcess, **extra: str) -> dict[str, str]:
    return base_env(NATS_URL=nats_url, DATABASE_URL=database_url, POLAR_ACCESS_TOKEN=TOKEN,
                    POLAR_SERVER=emulator.url, POLAR_FLUSH_INTERVAL_SECONDS="0.2",
                    POLAR_MAX_REQUESTS_PER_SECOND="8", POLAR_REQUESTS_PER_MINUTE="960", **extra)


async def reset_usage_consumer(nats_url: str) -> None:
    await reset_consumer(nats_url, topology.USAGE.name, topology.USAGE_SYNC.name)


STARTED: list[ServiceProcess] = []


def start_usage_sync(env: dict[str, str], log_dir: Path, **extra: str) -> ServiceProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    svc = start_service("usage-sync", {**env, **extra}, log_dir)
    STARTED.append(svc)
    svc.wait_ready()
    return svc


def stop_all() -> None:
    """Every usage-sync a test started: none may outlive it and consume the next test's events."""
    while STARTED:
        svc = STARTED.pop()
        if svc.proc.poll() is None:
            svc.proc.kill()
            svc.proc.wait(10)


def make_events(n: int, users: Sequence[str], seed: int = 7, tag: str = "") -> list[UsageEvent]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    # Up to 10 minutes back, but within today (UTC): a test run just after midnight counts them in today's limits.
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)
    return [
        UsageEvent(event_id=f"ev-{tag}{i}", user_id=rng.choice(users), thread_id=f"th-{rng.randint(1, 40)}",
                   model=rng.choice(["gpt-4o", "claude-3-5-haiku-latest"]), input_tokens=rng.randint(0, 2000),
                   output_tokens=rng.randint(0, 800), cached_input_tokens=rng.randint(0, 100),
                   custom_key=rng.random() < 0.1,
                   occurred_at=max(midnight, now - timedelta(seconds=rng.randint(5, 600))))
        for i in range(n)
    ]


async def publish(client: BillingClient, events: Sequence[UsageEvent], concurrency: int = 300) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(e: UsageEvent) -> None:
        async with sem:
            await client.publish_usage(e)

    await asyncio.gather(*(one(e) for e in events))
