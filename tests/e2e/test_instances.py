"""Two of each process: two ingress workers on one port, two billing and two usage-sync instances. One of each is
killed (SIGKILL) mid-stream: the survivors carry on, totals are exact, `billing.rpc.check` keeps answering from the
queue group, and reserves stay exact across instances."""
from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats
import psutil
from polar_billing_client.client import BillingClient, BillingUnavailable

from dev.embedded import free_port
from shared import topology
from shared.db import connect
from shared.periods import month_of
from tests.conftest import Servers
from tests.e2e.procs import ROOT, ServiceProcess, base_env, start_service
from tests.e2e.stack import eventually, reset_consumer, stack_env
from tests.e2e.usage_stack import make_events, usage_env
from tests.support.cluster import (
    assert_lifecycles_equal,
    assert_nothing_dead_lettered,
    assert_usage_exact,
    dead_letters_stored,
    expected_lifecycle_rows,
    post_as_polar,
    publish_usage,
    usage_settled,
    webhook_deliveries,
    webhooks_settled,
    with_duplicates,
)
from tests.support.emulator import start_emulator

USERS = [f"usr_in{i}" for i in range(30)]
EVENTS = 6_000
LIFECYCLES = 30
CHECKERS = 8  # concurrent callers of billing.rpc.check


def start_instances(name: str, env: dict[str, str], log_dir: Path, n: int = 2) -> list[ServiceProcess]:
    started = []
    for i in range(n):
        (log_dir / f"{name}-{i + 1}").mkdir()
        started.append(start_service(name, env, log_dir / f"{name}-{i + 1}"))
    return started


def start_ingress_workers(env: dict[str, str], log_dir: Path, public_port: int, n: int = 2) -> list[ServiceProcess]:
    """As make run's INGRESS_WORKERS: all on the public port (SO_REUSEPORT), each also on its own for readiness."""
    workers = []
    for i in range(n):
        own = free_port()
        (log_dir / f"ingress-{i + 1}").mkdir()
        svc = start_service("ingress", {**env, "HTTP_REUSE_PORT": "true", "INSTANCE_HTTP_PORT": str(own)},
                            log_dir / f"ingress-{i + 1}", port=public_port)
        workers.append(ServiceProcess(f"ingress-{i + 1}", svc.proc, own, svc.log))
    return workers


async def room_for(db, user_id: str, reserves: int, each: int = 1_000) -> None:
    """A Free user (100,000 tokens a month) with room left for exactly `reserves` reserves of `each` tokens."""
    start, end = month_of(datetime.now(UTC))
    await db.execute("INSERT INTO usage_counters (user_id, limit_name, period_start, period_end, used) "
                     "VALUES ($1, 'tokens_per_month', $2, $3, $4)", user_id, start, end, 100_000 - reserves * each)


async def test_one_of_each_process_killed_mid_stream_leaves_totals_exact_and_checks_answering(
        servers: Servers, database_url: str, tmp_path) -> None:
    await reset_consumer(servers.nats_url, topology.POLAR_WEBHOOKS.name, topology.BILLING_WEBHOOKS.name)
    await reset_consumer(servers.nats_url, topology.USAGE.name, topology.USAGE_SYNC.name)
    emulator = start_emulator(tmp_path)
    env = stack_env(servers.nats_url, database_url)
    public = free_port()
    ingress = start_ingress_workers(env, tmp_path, public)
    billing = start_instances("billing", env, tmp_path)
    usage_sync = start_instances("usage-sync", usage_env(servers.nats_url, database_url, emulator), tmp_path)
    procs = [*ingress, *billing, *usage_sync]
    client = await BillingClient.connect(servers.nats_url)
    nc = await nats.connect(servers.nats_url)
    db = await connect(database_url)
    try:
        for p in procs:
            p.wait_ready()
        expected_rows = await expected_lifecycle_rows(db)
        dead_before = await dead_letters_stored(nc.jetstream())  # the session's server keeps other tests' ones

        # Reserves answered by both instances serialize on the user's lock: exactly the room is granted.
        user, k = f"usr_{uuid.uuid4().hex[:10]}", 37
        await room_for(db, user, k)
        replies = await asyncio.gather(*(client.reserve(user, estimated_tokens=1_000, timeout=10) for _ in range(200)))
        assert sum(r.allowed for r in replies) == k
        assert len({r.reservation_id for r in replies if r.allowed}) == k

        events = make_events(EVENTS, USERS, seed=41, tag="in")
        sends = with_duplicates(events, seed=42)
        tags = [f"in{i}" for i in range(LIFECYCLES)]
        deliveries = webhook_deliveries(tags, seed=43)
        latencies: list[float] = []
        unanswered = 0
        done = asyncio.Event()

        async def checker(i: int) -> None:
            nonlocal unanswered
            rng = random.Random(i)
            while not done.is_set():
                t0 = time.perf_counter()
                try:
                    await client.check(rng.choice(USERS), model="gpt-4o", timeout=1.0)
                    latencies.append(time.perf_counter() - t0)
                except BillingUnavailable:
                    unanswered += 1

        progress = {"usage": 0, "webhooks": 0}

        async def usage_traffic() -> None:  # paced, so the kills land while it flows
            for i in range(0, len(sends), 250):
                await publish_usage(client, sends[i:i + 250], concurrency=50)
                progress["usage"] += len(sends[i:i + 250])
                await asyncio.sleep(0.2)

        async def webhook_traffic(http: httpx.AsyncClient) -> int:
            refused = 0
            for i in range(0, len(deliveries), 24):
                refused += await post_as_polar(http, f"http://127.0.0.1:{public}/webhooks/polar",
                                               deliveries[i:i + 24], concurrency=8)
                progress["webhooks"] += len(deliveries[i:i + 24])
                await asyncio.sleep(0.2)
            return refused

        async def kill_one_of_each_mid_stream() -> None:
            async def mid_stream() -> bool:  # a third sent, two thirds to come, and both consumers at work
                return (progress["usage"] > len(sends) // 3 and progress["webhooks"] > len(deliveries) // 3
                        and await db.fetchval("SELECT count(*) FROM usage_events") > 0
                        and await db.fetchval("SELECT count(*) FROM webhook_log") > 0)

            await eventually(mid_stream, timeout=60, every=0.05)
            for victim in (billing[0], usage_sync[0], ingress[0]):
                victim.proc.kill()
            for victim in (billing[0], usage_sync[0], ingress[0]):
                assert victim.proc.wait(10) == -9
            assert progress["usage"] < len(sends) and progress["webhooks"] < len(deliveries)

        checkers = [asyncio.create_task(checker(i)) for i in range(CHECKERS)]
        async with httpx.AsyncClient() as http:
            _, refused, _ = await asyncio.gather(usage_traffic(), webhook_traffic(http),
                                                 kill_one_of_each_mid_stream())
        # The queue group's survivor answers every check once the dead instance's subscription is gone.
        after_kill = len(latencies)
        await asyncio.sleep(1.0)
        done.set()
        await asyncio.gather(*checkers)
        answered_after = await asyncio.gather(*(client.check(u, timeout=2.0) for u in USERS * 4))
        assert len(answered_after) == len(USERS) * 4
        assert len(latencies) > after_kill
        # Only a request in flight at the killed instance can go unanswered: at most one per caller.
        assert unanswered <= CHECKERS, unanswered
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99)] * 1000
        print(f"\ncheck during the kills: {len(latencies)} answered, {unanswered} unanswered, p99 {p99:.1f} ms; "
              f"webhook attempts refused or cut off: {refused}")

        await eventually(lambda: usage_settled(db, events), timeout=180, every=0.5)
        await eventually(lambda: webhooks_settled(db, tags), timeout=120, every=0.5)
        await assert_usage_exact(db, emulator, events)
        await assert_lifecycles_equal(db, tags, expected_rows)
        await assert_nothing_dead_lettered(db, nc.jetstream(), dead_before)
        for survivor in (billing[1], usage_sync[1], ingress[1]):
            assert survivor.proc.poll() is None, survivor.log.read_text()[-2000:]
        share = [w.log.read_text().count('"event": "webhook.stored"') for w in ingress]
        print(f"webhooks stored by each ingress worker (the first was killed): {share}")
    finally:
        for p in procs:
            p.stop_or_kill(10)
        await db.close()
        await client.close()
        await nc.close()
        emulator.stop_or_kill()


def test_make_run_starts_instances_on_a_cluster_and_restarts_a_dead_one_alone(tmp_path, output_dir) -> None:
    env = base_env(STACK_DATA_DIR=str(tmp_path / "data"), INGRESS_PORT=str(free_port()),
                   BILLING_HTTP_PORT=str(free_port()), USAGE_SYNC_HTTP_PORT=str(free_port()),
                   EMULATOR_PORT=str(free_port()), NATS_CLUSTER_SIZE="3", BILLING_INSTANCES="2",
                   USAGE_SYNC_INSTANCES="2", INGRESS_WORKERS="2")
    log = output_dir / "stack.log"
    with open(log, "wb") as out:
        stack = subprocess.Popen([sys.executable, "-m", "dev.stack"], env=env, cwd=ROOT, stdout=out,
                                 stderr=subprocess.STDOUT)
    try:
        wait_for_line(stack, log, "all services ready")
        text = log.read_text()
        assert "3-node JetStream cluster, R3 streams" in text
        for tag in ("ingress-1", "ingress-2", "billing-1", "billing-2", "usage-sync-1", "usage-sync-2"):
            assert f"\n{tag} " in text, tag
        nats_url = dict(line.split("=", 1) for line in (tmp_path / "data" / "stack.env").read_text().split())[
            "NATS_URL"]
        assert len(nats_url.split(",")) == 3
        assert asyncio.run(stream_replicas(nats_url)) == {3}

        family = psutil.Process(stack.pid).children(recursive=True)
        billing_2 = next(p for p in family if p.cmdline()[-1] == "billing"
                         and f"billing-2   http://127.0.0.1:{p.environ()['BILLING_HTTP_PORT']}" in text)
        # The other services, the emulator and the NATS nodes (PostgreSQL's backends come and go with connections).
        others = [p for p in family if p.pid != billing_2.pid and ("-m" in p.cmdline() or "nats-server" in p.name())]
        assert len(others) == 9
        billing_2.kill()
        wait_for_line(stack, log, "billing-2 ready again")
        assert "billing-2 exited unexpectedly with code -9; restarting it in 1s" in log.read_text()
        assert all(p.is_running() for p in others)  # nobody else was stopped or restarted
        stack.send_signal(signal.SIGINT)
        assert stack.wait(15) == 0, log.read_text()[-3000:]
    finally:
        if stack.poll() is None:  # a failed test: its children run in sessions of their own, kill them too
            family = psutil.Process(stack.pid).children(recursive=True)
            stack.kill()
            for p in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()


def wait_for_line(stack: subprocess.Popen, log: Path, line: str, timeout: float = 90.0) -> None:
    t0 = time.monotonic()
    while line not in log.read_text():
        assert stack.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() - t0 < timeout, log.read_text()[-3000:]
        time.sleep(0.1)


async def stream_replicas(nats_url: str) -> set[int]:
    nc = await nats.connect(topology.servers(nats_url))
    try:
        js = nc.jetstream()
        return {(await js.stream_info(s.name)).config.num_replicas for s in topology.STREAMS}
    finally:
        await nc.close()
