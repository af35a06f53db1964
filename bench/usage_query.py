"""billing.rpc.usage for a user with a year of history, through the shipped client (NATS → billing → usage-sync's
daily rollups), beside the raw baseline in the same run: the same grouping summed straight from the ledger with one
asyncpg query. p50 / p99 per grouping.

The ledger holds the user's year (365 days x EVENTS_PER_DAY events, 4 models, 12 threads) and OTHER_EVENTS of other
users, all recorded by usage-sync's own code (ledger.record), so the rollups are what production would have.
"""
from __future__ import annotations

import asyncio
import gc
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from polar_billing_client import BillingClient
from polar_billing_client.contracts import UsageEvent
from usage_sync import ledger

from dev.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from dev.stack import PYTHONPATH
from shared.db import create_pool
from shared.db.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
EVENTS_PER_DAY = int(os.environ.get("BENCH_EVENTS_PER_DAY", "100"))
OTHER_EVENTS = int(os.environ.get("BENCH_OTHER_EVENTS", "200000"))
CALLS = 300
BLOCK = 50
USER = "usr_year"
MODELS = ["gpt-4o", "claude-3-5-haiku-latest", "gemini-2.5-flash", "mistral-large-latest"]
GROUPINGS = [["day", "model"], ["thread"], ["model", "thread"]]
RAW = {  # the same sums from the raw ledger
    "day": "(occurred_at AT TIME ZONE 'UTC')::date", "model": "model", "thread": "thread_id"}


async def seed(db_url: str) -> tuple[datetime, datetime]:
    rng = random.Random(1)
    now = datetime.now(UTC)
    start = now - timedelta(days=365)
    pool = await create_pool(db_url, max_size=2)
    async with pool.acquire() as conn:
        batch: list[UsageEvent] = []
        n = 0
        for user, count in ((USER, 365 * EVENTS_PER_DAY), (None, OTHER_EVENTS)):
            for _ in range(count):
                n += 1
                at = start + timedelta(seconds=rng.randint(0, 365 * 86400 - 1))
                batch.append(UsageEvent(event_id=f"b{n}", user_id=user or f"usr_{rng.randint(1, 5000)}",
                                        thread_id=f"th-{rng.randint(1, 12)}", model=rng.choice(MODELS),
                                        input_tokens=rng.randint(10, 3000), output_tokens=rng.randint(0, 900),
                                        occurred_at=at))
                if len(batch) == 2000:
                    await ledger.record(conn, batch)
                    batch = []
        if batch:
            await ledger.record(conn, batch)
        await conn.execute("ANALYZE")
    await pool.close()
    return start, now


def stats(latencies: list[float]) -> dict[str, float]:
    latencies.sort()
    return {"p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2)}


async def measure(nats_url: str, db_url: str, start: datetime, end: datetime) -> list[dict]:
    client = await BillingClient.connect(nats_url, timeout=10)
    conn = await asyncpg.connect(db_url)
    # The seed's leftovers and every module loaded so far would otherwise be walked by each full collection this
    # process makes, and both targets' p99 would measure this harness (billing freezes its own start-up the same way).
    gc.collect()
    gc.freeze()
    rows = []
    for group_by in GROUPINGS:
        cols = ", ".join(RAW[g] for g in group_by)
        raw_sql = (f"SELECT {cols}, count(*), sum(input_tokens), sum(output_tokens), sum(cached_input_tokens), "
                   f"sum(billable_tokens), sum(cost_micro_usd) FROM usage_events WHERE user_id = $1 "
                   f"AND occurred_at >= $2 AND occurred_at < $3 GROUP BY {cols}")
        ours: list[float] = []
        raw: list[float] = []
        # Blocks of BLOCK calls, alternating, so both see the same machine; a call straight after the other target's
        # 40 ms ledger scan would measure that scan's aftermath (caches) rather than itself. 20 calls warm up.
        for block in range(-1, CALLS // BLOCK):
            for _ in range(BLOCK if block >= 0 else 20):
                t0 = time.perf_counter()
                await client.usage(USER, from_=start.date(), to=end.date() + timedelta(days=1), group_by=group_by)
                if block >= 0:
                    ours.append(time.perf_counter() - t0)
            for _ in range(BLOCK if block >= 0 else 20):
                t0 = time.perf_counter()
                await conn.fetch(raw_sql, USER, start, end + timedelta(days=1))
                if block >= 0:
                    raw.append(time.perf_counter() - t0)
        rows.append({"group_by": ",".join(group_by), "usage_rpc": stats(ours), "raw_ledger_scan": stats(raw)})
    await client.close()
    await conn.close()
    return rows


def main() -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-usage-query-"))
    srv, pg = EmbeddedNats(tmp / "nats", sync_always=False), EmbeddedPostgres(tmp / "pg", durable=True)
    nats_url, db_url = srv.start(), pg.start()
    billing = None
    try:
        asyncio.run(migrate(db_url))
        t0 = time.perf_counter()
        start, end = asyncio.run(seed(db_url))
        seeded = time.perf_counter() - t0
        env = {**os.environ, "NATS_URL": nats_url, "DATABASE_URL": db_url, "PYTHONPATH": PYTHONPATH,
               "LOG_LEVEL": "WARNING", "BILLING_HTTP_PORT": str(free_port())}
        billing = subprocess.Popen([sys.executable, "-m", "billing"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        time.sleep(3)
        rows = asyncio.run(measure(nats_url, db_url, start, end))
    finally:
        if billing:
            billing.terminate()
            billing.wait(15)
        srv.stop()
        pg.stop()
    print(f"a year of history: {365 * EVENTS_PER_DAY:,} events of the user, {OTHER_EVENTS:,} of others "
          f"(recorded in {seeded:.0f}s)")
    print(f"{'group_by':<14} {'usage rpc p50':>14} {'p99':>8} {'raw scan p50':>13} {'p99':>8}")
    for r in rows:
        print(f"{r['group_by']:<14} {r['usage_rpc']['p50_ms']:>14} {r['usage_rpc']['p99_ms']:>8} "
              f"{r['raw_ledger_scan']['p50_ms']:>13} {r['raw_ledger_scan']['p99_ms']:>8}")
    return {"benchmark": "usage_query", "rows": rows}


if __name__ == "__main__":
    main()
