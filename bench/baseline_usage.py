"""The raw baseline for bench/usage_ingest.py: nats-py pull consume + one `unnest` insert per batch with asyncpg into
the same tables (ledger rows, token counters), commit, ack. No validation, periods, threads, reservations or outbox.
Run: python -m bench.baseline_usage   (NATS_URL, DATABASE_URL from the environment)
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import defaultdict
from datetime import datetime

import asyncpg
import nats

from shared import topology
from shared.periods import month_of

# BENCH_BASELINE_ROLLUPS=1: also keep the usage analytics' three rollups (the same table writes usage-sync does since
# the analytics landed), so the ratio measures the consumer and not the feature.
WITH_ROLLUPS = os.environ.get("BENCH_BASELINE_ROLLUPS") == "1"


async def main() -> None:
    nc = await nats.connect(topology.servers(os.environ["NATS_URL"]))
    pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=1, max_size=2)
    sub = await nc.jetstream().pull_subscribe_bind(topology.USAGE_SYNC.name, topology.USAGE.name)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(1000, timeout=1)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        events = [json.loads(m.data) for m in msgs]
        counters: dict[tuple, int] = defaultdict(int)
        rollups: dict[tuple, list[int]] = {}
        for e in events:
            at = datetime.fromisoformat(e["occurred_at"])
            start, end = month_of(at)
            counters[(e["user_id"], start, end)] += e["input_tokens"] + e["output_tokens"]
            if WITH_ROLLUPS:
                r = rollups.setdefault((e["user_id"], at.date(), e["model"], e["thread_id"]), [0, 0, 0])
                r[0] += 1
                r[1] += e["input_tokens"]
                r[2] += e["output_tokens"]
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO usage_events (event_id, user_id, thread_id, model, input_tokens, output_tokens,
                                             billable_tokens, occurred_at)
                   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                                        $7::bigint[], $8::timestamptz[])
                   ON CONFLICT (event_id, occurred_at) DO NOTHING""",
                [e["event_id"] for e in events], [e["user_id"] for e in events], [e["thread_id"] for e in events],
                [e["model"] for e in events], [e["input_tokens"] for e in events],
                [e["output_tokens"] for e in events], [e["input_tokens"] + e["output_tokens"] for e in events],
                [datetime.fromisoformat(e["occurred_at"]) for e in events])
            keys = sorted(counters)
            await conn.execute(
                """INSERT INTO usage_counters (user_id, limit_name, period_start, period_end, used)
                   SELECT u, 'tokens_per_month', s, e, v FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[],
                                                                    $4::bigint[]) AS t(u, s, e, v)
                   ON CONFLICT (user_id, limit_name, period_start) DO UPDATE SET used = usage_counters.used + EXCLUDED.used""",
                [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [counters[k] for k in keys])
            if rollups:  # the analytics' three rollups, as usage-sync keeps them (bench/usage_ingest.py)
                rk = sorted(rollups)
                await conn.execute(
                    """WITH added (user_id, day, model, thread_id, events, input_tokens, output_tokens) AS (
                           SELECT * FROM unnest($1::text[], $2::date[], $3::text[], $4::text[], $5::bigint[],
                                                $6::bigint[], $7::bigint[])),
                       fine AS (
                           INSERT INTO usage_rollups AS r (user_id, day, model, thread_id, events, input_tokens,
                                                           output_tokens)
                           SELECT * FROM added
                           ON CONFLICT (user_id, day, model, thread_id) DO UPDATE SET events = r.events + EXCLUDED.events,
                               input_tokens = r.input_tokens + EXCLUDED.input_tokens,
                               output_tokens = r.output_tokens + EXCLUDED.output_tokens),
                       by_model AS (
                           INSERT INTO usage_rollups_by_model AS r (user_id, day, model, events, input_tokens,
                                                                    output_tokens)
                           SELECT user_id, day, model, sum(events), sum(input_tokens), sum(output_tokens)
                           FROM added GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
                           ON CONFLICT (user_id, day, model) DO UPDATE SET events = r.events + EXCLUDED.events,
                               input_tokens = r.input_tokens + EXCLUDED.input_tokens,
                               output_tokens = r.output_tokens + EXCLUDED.output_tokens)
                       INSERT INTO usage_rollups_by_month AS r (user_id, month, model, thread_id, events,
                                                                input_tokens, output_tokens)
                       SELECT user_id, date_trunc('month', day)::date, model, thread_id, sum(events),
                              sum(input_tokens), sum(output_tokens)
                       FROM added GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
                       ON CONFLICT (user_id, month, model, thread_id) DO UPDATE SET events = r.events + EXCLUDED.events,
                           input_tokens = r.input_tokens + EXCLUDED.input_tokens,
                           output_tokens = r.output_tokens + EXCLUDED.output_tokens""",
                    [k[0] for k in rk], [k[1] for k in rk], [k[2] for k in rk], [k[3] for k in rk],
                    [rollups[k][0] for k in rk], [rollups[k][1] for k in rk], [rollups[k][2] for k in rk])
        for m in msgs:
            await m.ack()
    await pool.close()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
