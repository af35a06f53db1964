"""The messaging layer beside FastStream 0.7.8 and bare nats-py, in the same run and the same process, with handlers
that do nothing: what each costs per message, before any database work.

- consume: 5,000 stored messages through a durable pull consumer with one in flight (billing's webhook consumer),
  each acked: messages/s. FastStream: `PullSub(batch_size=1)`; ours: shared.messaging.consume; raw: fetch(1) + ack.
- rpc: a pydantic request in, a pydantic reply out over core request/reply, 1 and 32 concurrent callers: p50 / p99
  and requests/s. FastStream: a core subscriber with a model argument and return value; ours: shared.messaging.rpc;
  raw: a nats-py callback that parses and answers with json.
"""
from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from nats.js.api import AckPolicy as JsAck
from nats.js.api import ConsumerConfig, StreamConfig
from pydantic import BaseModel

from dev.embedded import EmbeddedNats
from shared.messaging.consume import Consumer, Running
from shared.messaging.rpc import RpcServer, endpoint
from shared.topology import Durable

N = 5000
RPC_SECONDS = 3.0


class Ask(BaseModel):
    user_id: str
    estimated_tokens: int | None = None


class Answer(BaseModel):
    allowed: bool
    user_id: str


class _Rt:
    """The little of a runtime the layer's consumer touches when nothing fails."""

    def __init__(self, nc: nats.NATS) -> None:
        self.js = nc.jetstream()
        self.pool = None


async def fill(nc: nats.NATS, stream: str, durable: str) -> Durable:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
    for i in range(N):
        await js.publish(f"{stream}.x", b'{"n": %d}' % i)
    cfg = ConsumerConfig(name=durable, durable_name=durable, ack_policy=JsAck.EXPLICIT, max_ack_pending=1,
                         ack_wait=30)
    await js.add_consumer(stream, cfg)
    return Durable(stream, cfg)


async def wait_drained(nc: nats.NATS, d: Durable) -> float:
    t0 = time.perf_counter()
    while (await nc.jetstream().consumer_info(d.stream, d.name)).num_ack_pending or \
            (await nc.jetstream().consumer_info(d.stream, d.name)).num_pending:
        await asyncio.sleep(0.01)
    return time.perf_counter() - t0


async def consume_raw(url: str) -> float:
    nc = await nats.connect(url)
    d = await fill(nc, "RAW", "raw")
    sub = await nc.jetstream().pull_subscribe_bind(d.name, d.stream)
    t0 = time.perf_counter()
    done = 0
    while done < N:
        for m in await sub.fetch(1, timeout=5):
            json.loads(m.data)
            await m.ack()
            done += 1
    took = await wait_drained(nc, d) + time.perf_counter() - t0
    await nc.close()
    return N / took


async def consume_ours(url: str) -> float:
    nc = await nats.connect(url)
    d = await fill(nc, "OURS", "ours")

    async def handle(item: dict[str, Any], rt: Any) -> None:
        pass

    running = Running(Consumer(d, lambda m: json.loads(m.data), handle, batched=False), _Rt(nc))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    running.start()
    took = await wait_drained(nc, d)
    took = time.perf_counter() - t0
    await running.stop(1)
    await nc.close()
    return N / took


async def consume_faststream(url: str) -> float:
    nc = await nats.connect(url)
    d = await fill(nc, "FS", "fs")
    broker = NatsBroker(url, logger=None)  # no per-message log lines: the cost measured is the stack

    @broker.subscriber("FS.>", stream=JStream("FS", declare=False), durable="fs",
                       pull_sub=PullSub(batch_size=1, timeout=5.0), ack_policy=AckPolicy.ACK)
    async def handle(body: dict[str, Any]) -> None:
        pass

    t0 = time.perf_counter()
    await broker.start()
    await wait_drained(nc, d)
    took = time.perf_counter() - t0
    await broker.stop()
    await nc.close()
    return N / took


async def drive(nc: nats.NATS, subject: str, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + RPC_SECONDS
    body = Ask(user_id="usr_1", estimated_tokens=100).model_dump_json().encode()

    async def caller() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            reply = await nc.request(subject, body, timeout=5)
            Answer.model_validate_json(reply.data)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    took = time.perf_counter() - t0
    latencies.sort()
    return {"rps": round(len(latencies) / took), "p50_ms": round(statistics.median(latencies) * 1000, 3),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3)}


async def rpc(url: str) -> dict[str, dict[int, dict[str, float]]]:
    server = await nats.connect(url)
    client = await nats.connect(url)

    async def raw_cb(msg: Any) -> None:
        async def answer() -> None:
            ask = json.loads(msg.data)
            await msg.respond(json.dumps({"allowed": True, "user_id": ask["user_id"]}).encode())
        asyncio.create_task(answer())

    await server.subscribe("bench.raw", queue="q", cb=raw_cb)

    @endpoint("bench_ours", Ask)
    async def ours(req: Ask, rt: Any) -> Answer:
        return Answer(allowed=True, user_id=req.user_id)

    layer: RpcServer[Any] = RpcServer(server, [ours], None, queue="q")
    await layer.start()

    broker = NatsBroker(url, logger=None)  # no per-message log lines: the cost measured is the stack

    @broker.subscriber("bench.fs", queue="q")
    async def fs(req: Ask) -> Answer:
        return Answer(allowed=True, user_id=req.user_id)

    await broker.start()
    out: dict[str, dict[int, dict[str, float]]] = {"raw": {}, "ours": {}, "faststream": {}}
    for concurrency in (1, 32):
        for _ in range(2):  # alternate, twice: the second round is the one kept
            for name, subject in (("raw", "bench.raw"), ("ours", "billing.rpc.bench_ours"), ("faststream", "bench.fs")):
                out[name][concurrency] = await drive(client, subject, concurrency)
    await broker.stop()
    await layer.stop(1)
    await server.close()
    await client.close()
    return out


def main() -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-messaging-"))
    srv = EmbeddedNats(tmp / "nats", sync_always=False)
    url = srv.start()
    try:
        consume = {"raw": asyncio.run(consume_raw(url)), "ours": asyncio.run(consume_ours(url)),
                   "faststream": asyncio.run(consume_faststream(url))}
        calls = asyncio.run(rpc(url))
    finally:
        srv.stop()
    print(f"consume, one in flight ({N} messages): " +
          ", ".join(f"{k} {v:,.0f}/s" for k, v in consume.items()))
    for concurrency in (1, 32):
        print(f"rpc, {concurrency} caller(s): " + ", ".join(
            f"{k} {v[concurrency]['rps']}/s p50 {v[concurrency]['p50_ms']} ms p99 {v[concurrency]['p99_ms']} ms"
            for k, v in calls.items()))
    return {"benchmark": "messaging", "consume": consume, "rpc": calls}


if __name__ == "__main__":
    main()
