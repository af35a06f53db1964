"""Webhooks applied per second (publish → committed webhook log rows) with one billing instance and two, on one
NATS server and on a 3-node R3 cluster, each beside the raw baseline (bench/baseline_webhooks.py) in the same run;
then usage ingest on the 3-node R3 cluster beside its raw baseline (bench/baseline_usage.py).

Each phase gets fresh embedded servers (NATS with its default fsync, PostgreSQL durable, as bench/usage_ingest.py).
The webhooks are subscription lifecycles (8 events per user, Polar's example payloads), published straight into
POLAR_WEBHOOKS with their ids while the consumers run, as ingress stores them. Reports webhooks/s from the first
publish to the last commit.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
import nats

from bench.usage_ingest import publish_all, visibility, wait_rows
from dev.embedded import EmbeddedNats, EmbeddedNatsCluster, EmbeddedPostgres, free_port
from dev.stack import PYTHONPATH
from shared import topology
from shared.db.migrate import migrate
from tests.support.webhooks import PRO_PRODUCT, body_of, example, retarget

ROOT = Path(__file__).resolve().parent.parent
N = int(os.environ.get("BENCH_WEBHOOKS", "8000"))
USAGE_N = int(os.environ.get("BENCH_CLUSTER_USAGE_EVENTS", "100000"))
LIFECYCLE = ["subscription.created", "subscription.active", "subscription.updated", "subscription.canceled",
             "subscription.uncanceled", "subscription.cycled", "subscription.past_due", "subscription.revoked"]


def webhooks(n: int) -> list[tuple[str, str, bytes]]:
    """(webhook id, type, body) for n // 8 users' lifecycles, interleaved as many users' webhooks arrive."""
    examples = {name: example(name) for name in LIFECYCLE}
    users = [[(f"wh-b{u}-{name}", name, body_of(retarget(examples[name], f"b{u}"))) for name in LIFECYCLE]
             for u in range(n // len(LIFECYCLE))]
    return [hooks[i] for i in range(len(LIFECYCLE)) for hooks in users]


async def publish_webhooks(nats_url: str, items: list[tuple[str, str, bytes]]) -> float:
    nc = await nats.connect(topology.servers(nats_url))
    js = nc.jetstream(publish_async_max_pending=2000)
    t0 = time.perf_counter()
    for webhook_id, event_type, body in items:
        await js.publish_async(topology.webhook_subject(event_type), body,
                               headers={"Nats-Msg-Id": webhook_id, "webhook-id": webhook_id})
    await js.publish_async_completed()
    took = time.perf_counter() - t0
    await nc.close()
    return took


async def wait_applied(db_url: str, n: int, timeout: float = 900) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        t0 = time.monotonic()
        while await conn.fetchval("SELECT count(*) FROM webhook_log WHERE status <> 'received'") < n:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError("the consumers did not finish")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


@contextmanager
def servers(tmp: Path, nodes: int) -> Iterator[tuple[EmbeddedNats | EmbeddedNatsCluster, str]]:
    nats_server: EmbeddedNats | EmbeddedNatsCluster = (
        EmbeddedNats(tmp / "nats", sync_always=False) if nodes == 1
        else EmbeddedNatsCluster(tmp / "nats", nodes, sync_always=False))
    pg = EmbeddedPostgres(tmp / "pg", durable=True)
    nats_server.start()
    db_url = pg.start()
    try:
        asyncio.run(migrate(db_url))
        asyncio.run(topology.apply(nats_server.url, 3 if nodes > 1 else None))
        yield nats_server, db_url
    finally:
        nats_server.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_ready(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, "billing exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("billing not ready")


def webhook_phase(target: str, nodes: int, instances: int, items: list[tuple[str, str, bytes]]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-webhooks-{target}-"))
    with servers(tmp, nodes) as (nats_server, db_url):
        env = {**os.environ, "NATS_URL": nats_server.url, "DATABASE_URL": db_url, "PYTHONPATH": PYTHONPATH,
               "LOG_LEVEL": "WARNING", "POLAR_PRO_PRODUCT_ID": PRO_PRODUCT, "POLAR_TEAM_PRODUCT_ID": "prod_team",
               "BENCH_PRO_PRODUCT": PRO_PRODUCT}
        module = "bench.baseline_webhooks" if target == "baseline" else "billing"
        procs = []
        try:
            for _ in range(instances):
                port = free_port()
                procs.append(subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.STDOUT, env={**env, "BILLING_HTTP_PORT": str(port)}))
                if module == "billing":
                    _wait_ready(port, procs[-1])
            time.sleep(2.0)  # bound to the durable
            t0 = time.perf_counter()
            publish_s = asyncio.run(publish_webhooks(nats_server.url, items))
            asyncio.run(wait_applied(db_url, len(items)))
            total = time.perf_counter() - t0
        finally:
            for p in procs:
                p.terminate()
                p.wait(30)
    return {"target": target, "nats": "1 node" if nodes == 1 else f"{nodes} nodes, R3", "instances": instances,
            "webhooks": len(items), "publish_s": round(publish_s, 2), "total_s": round(total, 2),
            "webhooks_per_s": round(len(items) / total)}


def usage_phase(target: str, n: int) -> dict:
    """bench/usage_ingest.py's throughput phase, on the 3-node cluster with R3 streams."""
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-cluster-usage-{target}-"))
    with servers(tmp, 3) as (cluster, db_url):
        assert isinstance(cluster, EmbeddedNatsCluster)
        # bench/baseline_usage.py passes NATS_URL to nats-py as one URL: one node, which routes to the leaders
        # (usage-sync and the publisher connect to one node each too).
        one_node = cluster.nodes[0].url
        env = {**os.environ, "NATS_URL": one_node if target == "baseline" else cluster.url, "DATABASE_URL": db_url,
               "PYTHONPATH": PYTHONPATH, "LOG_LEVEL": "WARNING", "USAGE_SYNC_HTTP_PORT": str(free_port())}
        module = "bench.baseline_usage" if target == "baseline" else "usage_sync"
        proc = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
        try:
            time.sleep(2.5)
            t0 = time.perf_counter()
            publish_s = asyncio.run(publish_all(one_node, n))
            asyncio.run(wait_rows(db_url, n))
            total = time.perf_counter() - t0
            p50, p99 = asyncio.run(visibility(db_url))
        finally:
            proc.terminate()
            proc.wait(30)
    return {"target": target, "nats": "3 nodes, R3", "events": n, "publish_s": round(publish_s, 2),
            "total_s": round(total, 2), "events_per_s": round(n / total), "visible_p50_ms": round(p50, 1),
            "visible_p99_ms": round(p99, 1)}


def main() -> dict:
    items = webhooks(N)
    rows = []
    for nodes in (1, 3):
        rows += [webhook_phase("baseline", nodes, 1, items), webhook_phase("billing", nodes, 1, items),
                 webhook_phase("billing", nodes, 2, items)]
    usage = [usage_phase("baseline", USAGE_N), usage_phase("usage-sync", USAGE_N)]
    result = {"benchmark": "webhooks", "webhooks": rows, "usage_on_cluster": usage,
              "machine": f"{os.cpu_count()} cpu", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"webhooks-{int(time.time())}.json").write_text(json.dumps(result, indent=2))
    print(f"{'target':<10} {'nats':<12} {'instances':>9} {'webhooks/s':>11} {'x baseline':>11}")
    for r in rows:
        base = next(b for b in rows if b["target"] == "baseline" and b["nats"] == r["nats"])
        print(f"{r['target']:<10} {r['nats']:<12} {r['instances']:>9} {r['webhooks_per_s']:>11} "
              f"{r['webhooks_per_s'] / base['webhooks_per_s']:>10.2f}x")
    for u in usage:
        print(json.dumps(u))
    print(f"usage-sync / baseline on the 3-node R3 cluster: "
          f"{usage[1]['events_per_s'] / usage[0]['events_per_s']:.2f}x ({USAGE_N} events)")
    return result


if __name__ == "__main__":
    main()
