"""Usage throughput, publish → committed ledger + counters, beside the raw baseline, in the same run.

Each phase gets fresh embedded NATS and PostgreSQL. Events are published (nats-py publish_async, as a chat
service at volume should) while the consumer runs, first to the raw baseline (bench/baseline_usage.py), then to
usage-sync: N as fast as possible (throughput; no Polar, like the baseline), then 50,000 at 5,000/s with the Polar
emulator in the loop (visibility at a sustainable rate, requests per second to Polar). Reports events/s from first publish to
last commit, p99 of event → row visible (received_at − occurred_at; received_at is the batch transaction's start,
so it is a lower bound by the few ms the batch's commit takes), usage-sync's RSS, and Polar requests/s.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import nats
import psutil

from dev.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from dev.stack import PYTHONPATH
from shared import topology
from shared.db.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
N = int(os.environ.get("BENCH_USAGE_EVENTS", "200000"))
USERS = 500


async def publish_all(nats_url: str, n: int, rate: float | None = None) -> float:
    """Publish n events, as fast as possible or at `rate` events/s."""
    nc = await nats.connect(topology.servers(nats_url))
    js = nc.jetstream(publish_async_max_pending=4000)
    t0 = time.perf_counter()
    for i in range(n):
        if rate and i % 100 == 0:
            ahead = t0 + i / rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
        now = datetime.now(UTC).isoformat()
        user = f"usr_{i % USERS}"
        body = json.dumps({"event_id": f"bench-{i}", "user_id": user, "thread_id": f"th-{i % 3000}",
                           "model": "gpt-4o", "input_tokens": 700 + i % 300, "output_tokens": 90 + i % 50,
                           "occurred_at": now}).encode()
        await js.publish_async(f"usage.event.{user}", body, headers={"Nats-Msg-Id": f"bench-{i}"})
    await js.publish_async_completed()
    took = time.perf_counter() - t0
    await nc.close()
    return took


async def wait_rows(db_url: str, n: int, timeout: float = 900) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        t0 = time.monotonic()
        while await conn.fetchval("SELECT count(*) FROM usage_events") < n:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError("consumer did not finish")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def visibility(db_url: str) -> tuple[float, float]:
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM received_at - occurred_at)) p50, "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM received_at - occurred_at)) p99, "
            "max(received_at) last FROM usage_events")
        return row["p50"] * 1000, row["p99"] * 1000
    finally:
        await conn.close()


def phase(name: str, cmd: list[str], *, n: int = N, rate: float | None = None, polar: bool = False,
          extra_env: dict[str, str] | None = None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-usage-{name}-"))
    srv, pg = EmbeddedNats(tmp / "nats", sync_always=False), EmbeddedPostgres(tmp / "pg", durable=True)
    nats_url, db_url = srv.start(), pg.start()
    emulator = None
    try:
        asyncio.run(migrate(db_url))
        asyncio.run(topology.apply(nats_url))
        env = {**os.environ, "NATS_URL": nats_url, "DATABASE_URL": db_url, "PYTHONPATH": PYTHONPATH,
               "LOG_LEVEL": "WARNING", "USAGE_SYNC_HTTP_PORT": str(free_port()), **(extra_env or {})}
        if polar:
            port = free_port()
            emulator = subprocess.Popen([sys.executable, "-m", "polar_emulator"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL,
                                        env={**env, "EMULATOR_PORT": str(port), "EMULATOR_ACCESS_TOKEN": "bench"})
            env.update(POLAR_ACCESS_TOKEN="bench", POLAR_SERVER=f"http://127.0.0.1:{port}")
            time.sleep(1.5)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        time.sleep(2.0)  # started and bound to its consumer
        t0 = time.perf_counter()
        publish_seconds = asyncio.run(publish_all(nats_url, n, rate))
        asyncio.run(wait_rows(db_url, n))
        total = time.perf_counter() - t0
        p50, p99 = asyncio.run(visibility(db_url))
        result = {"target": name, "events": n, "publish_rate": rate or "max", "publish_s": round(publish_seconds, 2),
                  "total_s": round(total, 2), "events_per_s": round(n / total), "visible_p50_ms": round(p50, 1),
                  "visible_p99_ms": round(p99, 1)}
        if name == "usage-sync":
            result["rss_mb"] = round(psutil.Process(proc.pid).memory_info().rss / 2**20, 1)
        if polar:
            time.sleep(3)  # let the outbox finish
            reqs = httpx.get(f"http://127.0.0.1:{port}/__emulator__/events", timeout=60).json()["requests"]
            per_second = Counter(int(r["at"]) for r in reqs if r["path"] == "/v1/events/ingest")
            result["polar_requests"] = sum(per_second.values())
            result["polar_max_requests_per_s"] = max(per_second.values()) if per_second else 0
        proc.terminate()
        proc.wait(30)
        return result
    finally:
        if emulator:
            emulator.terminate()
            emulator.wait(10)
        srv.stop()
        pg.stop()


def main() -> dict:
    usage_sync = [sys.executable, "-m", "usage_sync"]
    rows = [phase("baseline", [sys.executable, "-m", "bench.baseline_usage"]),
            phase("usage-sync", usage_sync),
            # The same raw consumer, also writing the analytics' daily rollups as usage-sync does.
            phase("baseline+rollups", [sys.executable, "-m", "bench.baseline_usage"],
                  extra_env={"BENCH_BASELINE_ROLLUPS": "1"}),
            # Steady load with Polar in the loop: visibility at a sustainable rate, and requests per second to Polar.
            phase("baseline", [sys.executable, "-m", "bench.baseline_usage"], n=50_000, rate=5000),
            phase("usage-sync", usage_sync, n=50_000, rate=5000, polar=True)]
    result = {"benchmark": "usage_ingest", "rows": rows,
              "ratio": round(rows[1]["events_per_s"] / rows[0]["events_per_s"], 3),
              "ratio_same_writes": round(rows[1]["events_per_s"] / rows[2]["events_per_s"], 3),
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"usage-{int(time.time())}.json").write_text(json.dumps(result, indent=2))
    for r in rows:
        print(json.dumps(r))
    print(f"usage-sync / baseline throughput: {result['ratio']}x; / baseline with the same rollup writes: "
          f"{result['ratio_same_writes']}x ({N} events)")
    return result


if __name__ == "__main__":
    main()
