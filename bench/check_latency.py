"""`check` through the shipped client at 1, 8 and 32 concurrent callers, beside the raw baseline (a bare nats-py
responder doing one asyncpg point read) in the same run, and the same check over HTTP through ingress's /v1/check
(aiohttp, a kept-alive connection per caller): requests/s, p50, p99. Then 32 callers against one billing instance
and two (billing.rpc.* is a queue group), beside one and two baseline responders: checks, and reserve + release
pairs (a chat response's cost with reservations)."""
from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import nats
from polar_billing_client.client import BillingClient
from polar_billing_client.contracts import CheckReply

from dev.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from dev.stack import PYTHONPATH
from shared import topology
from shared.db.migrate import migrate
from shared.periods import day_of, month_of

ROOT = Path(__file__).resolve().parent.parent
DURATION = float(os.environ.get("BENCH_CHECK_SECONDS", "5"))
API_KEY = "bench-api-key-0123456789abcdef"
ROUNDS = int(os.environ.get("BENCH_CHECK_ROUNDS", "3"))
USERS = 1000


async def seed(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    now = datetime.now(UTC)
    m, d = month_of(now), day_of(now)
    rows = [(f"usr_{i}", "tokens_per_month", m[0], m[1], i * 37) for i in range(USERS)]
    rows += [(f"usr_{i}", "messages_per_day", d[0], d[1], i % 90) for i in range(USERS)]
    await conn.executemany("INSERT INTO usage_counters (user_id, limit_name, period_start, period_end, used) "
                           "VALUES ($1, $2, $3, $4, $5)", rows)
    await conn.close()


async def drive(call, concurrency: int) -> dict:
    latencies: list[float] = []
    deadline = time.perf_counter() + DURATION

    async def caller(n: int) -> None:
        i = n
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await call(f"usr_{i % USERS}")
            latencies.append(time.perf_counter() - t0)
            i += concurrency

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(concurrency)))
    took = time.perf_counter() - t0
    latencies.sort()
    return {"concurrency": concurrency, "rps": round(len(latencies) / took),
            "p50_ms": round(statistics.median(latencies) * 1000, 3),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3)}


async def measure(nats_url: str, ingress_url: str) -> dict:
    client = await BillingClient.connect(nats_url)
    nc = await nats.connect(topology.servers(nats_url))
    http = aiohttp.ClientSession(ingress_url, headers={"authorization": f"Bearer {API_KEY}"})

    async def ours(user: str) -> None:
        await client.check(user, model="gpt-3.5-turbo", thread_id="t1")

    async def raw(user: str) -> None:
        await nc.request("bench.check", json.dumps({"user_id": user}).encode(), timeout=5)

    async def over_http(user: str) -> None:  # the same check through ingress's /v1/check (one kept-alive connection
        async with http.post("/v1/check", json={"user_id": user, "model": "gpt-3.5-turbo",  # per caller)
                                                "thread_id": "t1"}) as resp:
            CheckReply.model_validate_json(await resp.read())

    # Rounds alternate baseline and check, and the median round is reported with the spread: on a 2-core machine
    # the load client, NATS, PostgreSQL and the responder share the cores, and one run alone drifts by 20 %.
    targets = {"baseline": raw, "check": ours, "check_http": over_http}
    out: dict[str, list[dict]] = {name: [] for name in targets}
    for concurrency in (1, 8, 32):
        for call in targets.values():  # warm up
            await drive(call, concurrency)
        rounds: dict[str, list[dict]] = {name: [] for name in targets}
        for _ in range(ROUNDS):
            for name, call in targets.items():
                rounds[name].append(await drive(call, concurrency))
        for name, runs in rounds.items():
            mid = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
            out[name].append({**mid, "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                              "rps_spread": [min(r["rps"] for r in runs), max(r["rps"] for r in runs)],
                              "p99_spread": [min(r["p99_ms"] for r in runs), max(r["p99_ms"] for r in runs)]})
    await client.close()
    await nc.close()
    await http.close()
    return out


async def measure_saturated(nats_url: str, concurrency: int = 32) -> dict[str, dict]:
    """check and the baseline at `concurrency` callers, alternating over ROUNDS: the median round of each."""
    client = await BillingClient.connect(nats_url)
    nc = await nats.connect(topology.servers(nats_url))

    async def ours(user: str) -> None:
        await client.check(user, model="gpt-3.5-turbo", thread_id="t1")

    async def raw(user: str) -> None:
        await nc.request("bench.check", json.dumps({"user_id": user}).encode(), timeout=5)

    async def hold(user: str) -> None:  # what a chat response costs with reservations: reserve, then release
        held = await client.reserve(user, estimated_tokens=100)
        assert held.reservation_id, held
        await client.release(held.reservation_id)

    targets = {"baseline": raw, "check": ours, "reserve_release": hold}
    rounds: dict[str, list[dict]] = {name: [] for name in targets}
    for call in targets.values():
        await drive(call, concurrency)
    for _ in range(ROUNDS):
        for name, call in targets.items():
            rounds[name].append(await drive(call, concurrency))
    await client.close()
    await nc.close()
    return {name: {**sorted(runs, key=lambda r: r["rps"])[len(runs) // 2],
                   "rps_spread": [min(r["rps"] for r in runs), max(r["rps"] for r in runs)]}
            for name, runs in rounds.items()}


def main() -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-check-"))
    srv, pg = EmbeddedNats(tmp / "nats", sync_always=False), EmbeddedPostgres(tmp / "pg", durable=True)
    nats_url, db_url = srv.start(), pg.start()
    procs = []
    try:
        asyncio.run(migrate(db_url))
        asyncio.run(seed(db_url))
        ingress_port = free_port()
        env = {**os.environ, "NATS_URL": nats_url, "DATABASE_URL": db_url, "PYTHONPATH": PYTHONPATH,
               "LOG_LEVEL": "WARNING", "BILLING_HTTP_PORT": str(free_port()), "INGRESS_PORT": str(ingress_port),
               "CHAT_API_KEYS": API_KEY, "POLAR_WEBHOOK_SECRET": "whsec_" + "YmVuY2gtc2VjcmV0LWJlbmNoLXNlY3JldA=="}
        procs = [subprocess.Popen([sys.executable, "-m", "bench.baseline_check"], cwd=ROOT, env=env),
                 subprocess.Popen([sys.executable, "-m", "billing"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL),
                 subprocess.Popen([sys.executable, "-m", "ingress"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)]
        time.sleep(3)
        out = asyncio.run(measure(nats_url, f"http://127.0.0.1:{ingress_port}"))
        # Two billing instances (billing.rpc.* is one queue group), beside two baseline responders (one queue group).
        one = asyncio.run(measure_saturated(nats_url))
        procs += [subprocess.Popen([sys.executable, "-m", "bench.baseline_check"], cwd=ROOT, env=env),
                  subprocess.Popen([sys.executable, "-m", "billing"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                   env={**env, "BILLING_HTTP_PORT": str(free_port())})]
        time.sleep(3)
        two = asyncio.run(measure_saturated(nats_url))
        out["instances"] = [{"instances": 1, **{f"{k}_rps": v["rps"] for k, v in one.items()},
                             **{f"{k}_p99_ms": v["p99_ms"] for k, v in one.items()}},
                            {"instances": 2, **{f"{k}_rps": v["rps"] for k, v in two.items()},
                             **{f"{k}_p99_ms": v["p99_ms"] for k, v in two.items()}}]
    finally:
        for p in procs:
            p.terminate()
            p.wait(15)
        srv.stop()
        pg.stop()
    saturated = max(r["rps"] for r in out["check"]), max(r["rps"] for r in out["baseline"])
    result = {"benchmark": "check_latency", **out, "ratio_saturated": round(saturated[0] / saturated[1], 3),
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / f"check-{int(time.time())}.json").write_text(json.dumps(result, indent=2))
    print(f"{'target':<10} {'conc':>4} {'rps':>7} {'p50 ms':>8} {'p99 ms':>8}  spread over {ROUNDS} rounds (rps; p99)")
    for name in ("baseline", "check", "check_http"):
        for r in out[name]:
            print(f"{name:<10} {r['concurrency']:>4} {r['rps']:>7} {r['p50_ms']:>8} {r['p99_ms']:>8}  "
                  f"{r['rps_spread'][0]}-{r['rps_spread'][1]}; {r['p99_spread'][0]}-{r['p99_spread'][1]}")
    p99 = out["check"][0]["p99_ms"], out["baseline"][0]["p99_ms"]
    print(f"one caller: check p99 {p99[0]} ms = {p99[0] / p99[1]:.2f}x the baseline's {p99[1]} ms")
    print(f"check / baseline saturated throughput: {result['ratio_saturated']}x")
    for r in out["instances"]:
        print(f"{r['instances']} billing instance(s), 32 callers: check {r['check_rps']}/s (p99 {r['check_p99_ms']} ms), "
              f"reserve + release {r['reserve_release_rps']} pairs/s (p99 {r['reserve_release_p99_ms']} ms), "
              f"baseline with as many responders {r['baseline_rps']}/s (p99 {r['baseline_p99_ms']} ms)")
    return result


if __name__ == "__main__":
    main()
