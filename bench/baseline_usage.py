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


async def main() -> None:
    nc = await nats.connect(os.environ["NATS_URL"])
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
        for e in events:
            start, end = month_of(datetime.fromisoformat(e["occurred_at"]))
            counters[(e["user_id"], start, end)] += e["input_tokens"] + e["output_tokens"]
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO usage_events (event_id, user_id, thread_id, model, input_tokens, output_tokens,
                                             billable_tokens, occurred_at)
                   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                                        $7::bigint[], $8::timestamptz[]) ON CONFLICT (event_id) DO NOTHING""",
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
        for m in msgs:
            await m.ack()
    await pool.close()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
