"""The raw baseline for bench/webhooks.py: nats-py pull on billing's durable + one asyncpg transaction per webhook
with the same writes billing makes for a subscription event (the webhook log row, the customer and the monotonic
subscription upserts), commit, ack; up to CONCURRENCY at once, as billing's consumer. No validation, user lock,
plan-change detection or outbox.
Run: python -m bench.baseline_webhooks   (NATS_URL, DATABASE_URL, BENCH_PRO_PRODUCT from the environment)
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import UTC, datetime
from typing import Any

import asyncpg
import nats
from nats.aio.msg import Msg

from shared import topology

CONCURRENCY = 32  # as billing's @consumes (handlers.on_webhook)
LOWEST = datetime.min.replace(tzinfo=UTC)  # a customer row made from a nested reference, as billing writes it


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


async def apply(pool: asyncpg.Pool, msg: Msg, pro_product: str) -> None:
    webhook_id = msg.headers["webhook-id"] if msg.headers else ""
    envelope = json.loads(msg.data)
    s: dict[str, Any] = envelope["data"]
    event_ts = _ts(envelope["timestamp"])
    version = _ts(s.get("modified_at")) or _ts(s.get("created_at")) or event_ts
    user_id = (s.get("customer") or {}).get("external_id")
    async with pool.acquire() as conn, conn.transaction():
        claimed = await conn.fetchval(
            "INSERT INTO webhook_log (webhook_id, type, event_ts, payload, status, attempts) "
            "VALUES ($1, $2, $3, $4, 'received', 1) ON CONFLICT (webhook_id) DO NOTHING RETURNING true",
            webhook_id, envelope["type"], event_ts, msg.data.decode())
        if not claimed:
            return
        await conn.execute(
            """INSERT INTO customers (id, user_id, deleted_at, version, event_ts) VALUES ($1, $2, NULL, $3, $3)
               ON CONFLICT (id) DO UPDATE SET user_id = COALESCE(EXCLUDED.user_id, customers.user_id)
               WHERE (customers.version, customers.event_ts) < (EXCLUDED.version, EXCLUDED.event_ts)""",
            s["customer_id"], user_id, LOWEST)
        await conn.execute(
            """INSERT INTO subscriptions (id, customer_id, user_id, product_id, plan, unknown_product, status,
                   amount_cents, currency, recurring_interval, current_period_start, current_period_end,
                   cancel_at_period_end, canceled_at, started_at, ends_at, ended_at, checkout_id, version, event_ts)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
               ON CONFLICT (id) DO UPDATE SET customer_id = EXCLUDED.customer_id,
                   user_id = COALESCE(EXCLUDED.user_id, subscriptions.user_id), product_id = EXCLUDED.product_id,
                   plan = EXCLUDED.plan, unknown_product = EXCLUDED.unknown_product, status = EXCLUDED.status,
                   amount_cents = EXCLUDED.amount_cents, currency = EXCLUDED.currency,
                   recurring_interval = EXCLUDED.recurring_interval,
                   current_period_start = EXCLUDED.current_period_start,
                   current_period_end = EXCLUDED.current_period_end,
                   cancel_at_period_end = EXCLUDED.cancel_at_period_end, canceled_at = EXCLUDED.canceled_at,
                   started_at = EXCLUDED.started_at, ends_at = EXCLUDED.ends_at, ended_at = EXCLUDED.ended_at,
                   checkout_id = COALESCE(EXCLUDED.checkout_id, subscriptions.checkout_id),
                   version = EXCLUDED.version, event_ts = EXCLUDED.event_ts, updated_at = now()
               WHERE (subscriptions.version, subscriptions.event_ts) < (EXCLUDED.version, EXCLUDED.event_ts)""",
            s["id"], s["customer_id"], user_id, s["product_id"], "pro" if s["product_id"] == pro_product else None,
            s["product_id"] != pro_product, s["status"], s.get("amount"), s.get("currency"),
            s.get("recurring_interval"), _ts(s.get("current_period_start")), _ts(s.get("current_period_end")),
            bool(s.get("cancel_at_period_end")), _ts(s.get("canceled_at")), _ts(s.get("started_at")),
            _ts(s.get("ends_at")), _ts(s.get("ended_at")), s.get("checkout_id"), version, event_ts)
        await conn.execute("UPDATE webhook_log SET status = 'applied', processed_at = now() WHERE webhook_id = $1",
                           webhook_id)


async def main() -> None:
    nc = await nats.connect(topology.servers(os.environ["NATS_URL"]))
    pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=1, max_size=CONCURRENCY + 2)
    pro = os.environ["BENCH_PRO_PRODUCT"]
    sub = await nc.jetstream().pull_subscribe_bind(topology.BILLING_WEBHOOKS.name, topology.POLAR_WEBHOOKS.name)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    slots = asyncio.Semaphore(CONCURRENCY)
    tasks: set[asyncio.Task[None]] = set()

    async def one(m: Msg) -> None:
        try:
            await apply(pool, m, pro)
            await m.ack()
        finally:
            slots.release()

    while not stop.is_set():
        await slots.acquire()
        free = 1
        while free < CONCURRENCY and not slots.locked():
            await slots.acquire()
            free += 1
        try:
            msgs = await sub.fetch(free, timeout=1)
        except (TimeoutError, nats.errors.TimeoutError):
            msgs = []
        for _ in range(free - len(msgs)):
            slots.release()
        for m in msgs:
            task = asyncio.create_task(one(m))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    await pool.close()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
