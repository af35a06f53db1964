"""A batch pull loop over a durable JetStream consumer, with nats-py directly.

Why not FastStream's `PullSub(batch=True)`: in 0.7.8 its gathering loop catches `nats.errors.TimeoutError`, but
nats-py 2.16's `fetch` raises a plain `asyncio.TimeoutError` once the deadline is spent; the batch gathered so far is
then dropped unacked and comes back only after `ack_wait` (seen: 445 events 60 s late in a 10,000-event test).

One subscription, one fetch loop: each batch is one fetch (see `_gather`) handed to `handle`, which acks / naks /
terms each message. Up to `concurrency` batches are handled at once, so the next batch is fetched and parsed while the
previous one is in PostgreSQL. `stop()` lets the batches in hand finish.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

log = logging.getLogger(__name__)

TIMEOUTS = (nats.errors.TimeoutError, asyncio.TimeoutError)
IDLE_WAIT = 5.0  # how long one fetch waits for the first message of a batch


class BatchPuller:
    def __init__(self, js: JetStreamContext, stream: str, durable: str, handle: Callable[[list[Msg]], Awaitable[None]],
                 *, batch_size: int, concurrency: int = 1) -> None:
        self.js = js
        self.stream = stream
        self.durable = durable
        self.handle = handle
        self.batch_size = batch_size
        self.concurrency = concurrency
        self._running = True
        self._fetcher: asyncio.Task | None = None
        self._handlers: set[asyncio.Task] = set()
        self._sub: JetStreamContext.PullSubscription | None = None

    def start(self) -> None:
        self._fetcher = asyncio.create_task(self._run())

    async def stop(self, timeout: float) -> None:
        """Finish the batches being handled (up to `timeout`); a fetch still waiting is cancelled at once."""
        self._running = False
        if self._fetcher is not None:
            self._fetcher.cancel()
            await asyncio.gather(self._fetcher, return_exceptions=True)
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=timeout)  # past it: redelivered after ack_wait
        if self._sub is not None:
            # Otherwise the connection's drain at shutdown waits (drain_timeout) for fetched messages nobody takes.
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error:
                pass

    async def _run(self) -> None:
        sub = self._sub = await self.js.pull_subscribe_bind(self.durable, self.stream)
        slots = asyncio.Semaphore(self.concurrency)
        while self._running:
            await slots.acquire()
            try:
                batch = await self._gather(sub)
            except nats.errors.Error as exc:  # disconnected: the client reconnects; try again shortly
                slots.release()
                log.warning("pull.fetch_failed", extra={"durable": self.durable, "error": type(exc).__name__})
                await asyncio.sleep(0.5)
                continue
            if not batch:
                slots.release()
                continue
            task = asyncio.create_task(self._handle(batch, slots))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _handle(self, batch: list[Msg], slots: asyncio.Semaphore) -> None:
        try:
            await self.handle(batch)
        except Exception:  # noqa: BLE001 - unacked messages are redelivered; keep consuming
            log.exception("pull.handler_failed", extra={"durable": self.durable, "size": len(batch)})
        finally:
            slots.release()

    async def _gather(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        """One fetch: it returns at once with what is available (up to batch_size), or waits for a first message.
        Under load messages pile up while the previous batch is handled, so batches grow with the load. Follow-up
        fetches with short deadlines would leave pull requests that expire on our side before the server's:
        messages delivered to them wait out ack_wait (seen: a 60 s stall)."""
        try:
            return await sub.fetch(self.batch_size, timeout=IDLE_WAIT)
        except TIMEOUTS:
            return []
