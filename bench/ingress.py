"""Ingress throughput and latency, beside the raw baseline, in the same run.

Signed webhooks (distinct ids, so every one is really stored) are posted over loopback by a load process with
CONCURRENCY connections, first to the baseline (bench/baseline_ingress.py), then to our ingress process.
Reports requests/s, p50, p99 and the ratio, and writes bench/results/ingress-<time>.json.
"""
from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

from dev.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from dev.stack import PYTHONPATH
from shared import topology
from tests.support.webhooks import body_of, example, sign

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + "YmVuY2htYXJrLXNlY3JldC1iZW5jaG1hcmstc2VjcmV0"
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "50"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "6000"))
WARMUP = 500


def requests(tag: str, n: int) -> list[tuple[bytes, dict[str, str]]]:
    payload = example("subscription.updated")
    body = body_of(payload)
    return [(body, sign(SECRET, body, f"bench-{tag}-{i}")) for i in range(n)]


async def load(url: str, reqs: list[tuple[bytes, dict[str, str]]]) -> tuple[float, list[float]]:
    queue = list(reversed(reqs))
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as client:
        async def worker() -> None:
            while queue:
                body, headers = queue.pop()
                t0 = time.perf_counter()
                async with client.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 202, resp.status
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return time.perf_counter() - t0, latencies


def wait_http(url: str, proc: subprocess.Popen) -> None:
    for _ in range(300):
        assert proc.poll() is None, f"{url} exited"
        try:
            httpx.post(url, content=b"{}", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def measure(name: str, url: str) -> dict:
    asyncio.run(load(url, requests(f"{name}-warm-{time.time()}", WARMUP)))
    elapsed, lat = asyncio.run(load(url, requests(f"{name}-{time.time()}", REQUESTS)))
    lat.sort()
    return {"target": name, "requests": REQUESTS, "concurrency": CONCURRENCY, "seconds": round(elapsed, 3),
            "rps": round(REQUESTS / elapsed, 1), "p50_ms": round(statistics.median(lat) * 1000, 2),
            "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 2)}


def main() -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingress-"))
    started = []
    nats_url, db_url = os.environ.get("NATS_URL"), os.environ.get("DATABASE_URL")
    if not nats_url:
        # BENCH_NATS_SYNC=always is how make run and docker compose run NATS (fsync before every ack);
        # the default is NATS's own (fsync every 2 min), which most deployments use.
        srv = EmbeddedNats(tmp / "nats", sync_always=os.environ.get("BENCH_NATS_SYNC") == "always")
        nats_url = srv.start()
        started.append(srv)
    if not db_url:
        pg = EmbeddedPostgres(tmp / "pg", durable=False)
        db_url = pg.start()
        started.append(pg)
    asyncio.run(topology.apply(nats_url))
    env = {**os.environ, "NATS_URL": nats_url, "DATABASE_URL": db_url, "POLAR_WEBHOOK_SECRET": SECRET,
           "PYTHONPATH": PYTHONPATH, "LOG_LEVEL": "WARNING"}
    procs = []
    try:
        base_port, ours_port = free_port(), free_port()
        baseline = subprocess.Popen([sys.executable, "-m", "bench.baseline_ingress", str(base_port)], env=env, cwd=ROOT)
        ours = subprocess.Popen([sys.executable, "-m", "ingress"], env={**env, "INGRESS_PORT": str(ours_port)}, cwd=ROOT,
                                stdout=subprocess.DEVNULL)
        procs = [baseline, ours]
        base_url = f"http://127.0.0.1:{base_port}/webhooks/polar"
        ours_url = f"http://127.0.0.1:{ours_port}/webhooks/polar"
        wait_http(base_url, baseline)
        wait_http(ours_url, ours)
        rows = [measure("baseline", base_url), measure("ingress", ours_url)]
    finally:
        for p in procs:
            p.terminate()
            p.wait(15)
        for s in reversed(started):
            s.stop()
    result = {"benchmark": "ingress", "nats_sync": os.environ.get("BENCH_NATS_SYNC", "default"), "rows": rows, "ratio_rps": round(rows[1]["rps"] / rows[0]["rps"], 3),
              "machine": f"{os.cpu_count()} cpu", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"ingress-{int(time.time())}.json").write_text(json.dumps(result, indent=2))
    print(f"{'target':<10} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(f"{r['target']:<10} {r['rps']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8}")
    print(f"ingress / baseline throughput: {result['ratio_rps']}x  ({REQUESTS} signed webhooks, {CONCURRENCY} concurrent)")
    return result


if __name__ == "__main__":
    main()
