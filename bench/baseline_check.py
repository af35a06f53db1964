"""The raw baseline for bench/check_latency.py: a bare nats-py responder doing one asyncpg point read.
Run: python -m bench.baseline_check   (NATS_URL, DATABASE_URL from the environment)"""
from __future__ import annotations

import asyncio
import json
import os
import signal

import asyncpg
import nats

from shared import topology


async def main() -> None:
    nc = await nats.connect(topology.servers(os.environ["NATS_URL"]))
    pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=4, max_size=8)

    async def on_check(msg) -> None:
        user_id = json.loads(msg.data)["user_id"]
        used = await pool.fetchval("SELECT used FROM usage_counters WHERE user_id = $1 AND limit_name = "
                                   "'tokens_per_month' ORDER BY period_start DESC LIMIT 1", user_id)
        await msg.respond(json.dumps({"allowed": (used or 0) < 100_000, "used": used or 0}).encode())

    await nc.subscribe("bench.check", queue="bench", cb=on_check)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await nc.drain()
    await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
