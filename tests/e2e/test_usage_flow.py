"""Usage from the chat client to the ledger, the counters and Polar's meter: exactly once."""
from __future__ import annotations

import json
import random
from collections import Counter, defaultdict

import httpx
import nats
from usage_sync.polar_sync import MAX_EVENTS

from polar_emulator.config import TOKENS_METER_ID
from shared.periods import day_of, month_of
from tests.conftest import Servers
from tests.e2e.stack import eventually
from tests.e2e.usage_stack import make_events, publish, start_usage_sync
from tests.support.emulator import TOKEN, admin

USERS = [f"usr_{i}" for i in range(25)]

async def test_ten_thousand_events_published_up_to_three_times_shuffled_are_counted_and_billed_once(usage, tmp_path) -> None:
    emulator, env, client, db = usage
    svc = start_usage_sync(env, tmp_path / "us")
    events = make_events(10_000, USERS)
    rng = random.Random(11)
    sends = [e for e in events for _ in range(rng.randint(1, 3))]
    rng.shuffle(sends)
    await publish(client, sends)

    async def all_synced() -> bool:
        return await db.fetchval("SELECT count(*) FROM usage_events WHERE sync_status = 'synced'") == len(events)

    await eventually(all_synced, timeout=120, every=0.5)
    assert await db.fetchval("SELECT count(*) FROM usage_events") == 10_000

    # Counters equal the sums of the events.
    tokens: dict[tuple, int] = defaultdict(int)
    messages: dict[tuple, int] = defaultdict(int)
    threads: dict[tuple, set] = defaultdict(set)
    for e in events:
        month = month_of(e.occurred_at)[0]
        tokens[(e.user_id, month)] += e.billable_tokens
        messages[(e.user_id, day_of(e.occurred_at)[0])] += 1
        threads[(e.user_id, month)].add(e.thread_id)
    rows = await db.fetch("SELECT user_id, limit_name, period_start, used FROM usage_counters")
    got = {(r["user_id"], r["limit_name"], r["period_start"]): r["used"] for r in rows}
    want = {**{(u, "tokens_per_month", p): v for (u, p), v in tokens.items() if v},
            **{(u, "messages_per_day", p): v for (u, p), v in messages.items()},
            **{(u, "threads_per_month", p): len(v) for (u, p), v in threads.items()}}
    assert got == want

    # Polar received every event, inserted each exactly once, and its meter sums the billable tokens.
    seen = admin(emulator, "GET", "events").json()
    ids = Counter(e["external_id"] for e in seen["events"])
    assert set(ids) == {e.event_id for e in events} and set(ids.values()) == {1}
    async with httpx.AsyncClient() as http:
        q = (await http.get(f"{emulator.url}/v1/meters/{TOKENS_METER_ID}/quantities", headers={
            "Authorization": f"Bearer {TOKEN}"}, params={"start_timestamp": "2000-01-01T00:00:00Z",
                                                         "end_timestamp": "2100-01-01T00:00:00Z"})).json()
    assert q["total"] == sum(e.billable_tokens for e in events)
    assert all(b["size"] <= MAX_EVENTS for b in seen["batches"]) and sum(b["inserted"] for b in seen["batches"]) == 10_000
    sample = seen["events"][0]
    assert sample["name"] == "ai_usage" and set(sample["metadata"]) >= {"input_tokens", "output_tokens",
                                                                       "cached_input_tokens", "total_tokens",
                                                                       "model", "vendor", "_llm"}
    assert svc.stop() == 0


async def test_bad_messages_are_dead_lettered_with_their_reason_and_the_rest_of_the_batch_is_kept(
    usage, servers: Servers, tmp_path
) -> None:
    _emulator, env, client, db = usage
    svc = start_usage_sync(env, tmp_path / "us")
    good = make_events(50, USERS, tag="g")
    js = client.js
    bad = {
        "bad-json": b"{not json",
        "bad-negative": json.dumps({**good[0].model_dump(mode="json"), "event_id": "neg", "input_tokens": -5}).encode(),
        "bad-nouser": json.dumps({k: v for k, v in good[1].model_dump(mode="json").items() if k != "user_id"}
                                 | {"event_id": "nouser"}).encode(),
    }
    await publish(client, good[:25])
    for msg_id, body in bad.items():
        await js.publish("usage.event.usr_0", body, headers={"Nats-Msg-Id": msg_id})
    await publish(client, good[25:])

    async def done() -> bool:
        n = await db.fetchval("SELECT count(*) FROM usage_events")
        d = await db.fetchval("SELECT count(*) FROM dead_letters")
        return n == 50 and d == 3

    await eventually(done, timeout=30)
    reasons = {r["msg_id"]: r["reason"] for r in await db.fetch("SELECT msg_id, reason FROM dead_letters")}
    assert reasons["bad-json"] == "malformed JSON"
    assert "input_tokens" in reasons["bad-negative"] and "greater than or equal to 0" in reasons["bad-negative"]
    assert "user_id: Field required" in reasons["bad-nouser"]
    nc = await nats.connect(servers.nats_url)
    try:
        last = await nc.jetstream().get_last_msg("DEAD_LETTERS", "deadletter.usage-sync.usage.event.usr_0")
        assert last.headers["x-dead-letter-reason"]
    finally:
        await nc.close()
    metrics = httpx.get(f"{svc.url}/metrics/").text
    assert 'usage_events_dead_lettered_total{reason="malformed JSON"} 1.0' in metrics
    assert svc.stop() == 0


async def test_usage_crossing_80_and_100_percent_publishes_one_event_each(usage, servers: Servers, tmp_path) -> None:
    _emulator, env, client, db = usage
    start_usage_sync(env, tmp_path / "us")
    u = f"usr_thr_{random.randint(0, 10**9)}"
    events = make_events(60, [u], tag=f"thr{u}")
    for e in events:  # 60 × 2,000 = 120,000 tokens on Free's 100,000, in several batches, some concurrent
        e.input_tokens, e.output_tokens, e.custom_key = 2000, 0, False
    await publish(client, events[:30], concurrency=5)
    await publish(client, events[30:], concurrency=50)

    async def two_published() -> bool:
        return await db.fetchval("SELECT count(*) FROM usage_thresholds WHERE user_id=$1 AND published_at IS NOT NULL",
                                 u) == 2

    await eventually(two_published)
    nc = await nats.connect(servers.nats_url)
    try:
        sub = await nc.jetstream().subscribe("billing.event.usage.threshold", ordered_consumer=True)
        seen = []
        try:
            while True:
                body = json.loads((await sub.next_msg(timeout=2)).data)
                if body["user_id"] == u:
                    seen.append((body["limit"], body["percent"], body["limit_value"]))
        except nats.errors.TimeoutError:
            pass
    finally:
        await nc.close()
    assert seen == [("tokens_per_month", 80, 100_000), ("tokens_per_month", 100, 100_000)]
