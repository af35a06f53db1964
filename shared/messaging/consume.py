"""Durable JetStream consumers: one declaration next to each handler, one pull loop, one failure policy.

    @consumes(topology.BILLING_WEBHOOKS, parse=Webhook.from_msg, concurrency=8)
    async def on_webhook(webhook: Webhook, rt: BillingRuntime) -> None: ...          # up to 8 messages at once

    @consumes_batches(topology.USAGE_SYNC, parse=parse_usage)
    async def on_usage(events: list[UsageEvent], rt: UsageSyncRuntime) -> None: ...  # one call per batch

- Parsing happens here, at the edge: `parse` turns a message into the handler's model or raises `Invalid(reason)`,
  and an invalid message is dead-lettered at once. The handler sees typed values only.
- A handler that returns has committed its work: the message is acked, each on its own as soon as its own handler
  returned. One that raises is settled by one policy (shared.retry), per message: transient faults are retried
  with backoff for as long as they last; other failures are retried within a second; `PermanentError`, or a fifth
  failure, dead-letters the message (shared.messaging.dead_letters) and terminates it. In a batch, a failure that
  is not transient re-runs the batch one message at a time, so one poison message never takes the others with it.
- `concurrency`: single messages handled at once by one process (the handler must not care about order: billing's
  writes are monotonic and locked per user); batches handled at once for `consumes_batches`, so the next one is
  fetched and parsed while the last is in PostgreSQL.
- The pull loop is nats-py's, not FastStream's: docs/messaging.md says why. One fetch per free slot set: it returns
  at once with what is there (up to the batch size, or the free slots) or waits for a first message, so batches
  grow with the load. It never ends on an error: a lost server, a leader election or a reconnect only make fetches
  fail or come back empty for a while (docs/nats.md §10, §13).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import Counter, Histogram

from shared.retry import MAX_ATTEMPTS, Invalid, backoff, is_permanent, is_transient
from shared.runtime import Runtime
from shared.topology import Durable

from .dead_letters import dead_letter

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=Runtime)

CONSUMED = Counter("messaging_consumed_total", "Messages settled by a consumer, by outcome",
                   ["consumer", "outcome"])
HANDLING = Histogram("messaging_handling_seconds", "Time a handler took, per call (a batch is one call)",
                     ["consumer"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
IDLE_WAIT = 5.0  # how long one fetch waits for the first message
RETRY_BASE = 0.05  # a failing message's retries: 0.05, 0.1, 0.2, 0.4 s, then the dead-letter store
FETCH_TIMEOUTS = (nats.errors.TimeoutError, asyncio.TimeoutError)


__all__ = ["Consumer", "Invalid", "Running", "consumes", "consumes_batches"]

# What a consumer does once a message is given up on, besides the store (billing marks its webhook log row).
DeadLetterHook = Callable[[Msg, str, R], Awaitable[None]]


@dataclass(frozen=True)
class Consumer(Generic[T, R]):
    durable: Durable
    parse: Callable[[Msg], T]
    handle: Callable[[Any, R], Awaitable[None]]  # (T, rt) for single messages, (list[T], rt) for batches
    batched: bool
    batch_size: int = 1
    concurrency: int = 1
    on_dead_letter: DeadLetterHook | None = None

    @property
    def name(self) -> str:
        return self.durable.name

    def with_options(self, **changes: Any) -> Consumer[T, R]:
        return dataclasses.replace(self, **changes)

    async def __call__(self, item: Any, rt: R) -> None:
        """The handler itself, for a test or a replay that already holds a parsed value."""
        await self.handle(item, rt)


def consumes(durable: Durable, *, parse: Callable[[Msg], T], on_dead_letter: DeadLetterHook | None = None,
             concurrency: int = 1) -> Callable[[Callable[[T, R], Awaitable[None]]], Consumer[T, R]]:
    def declare(handle: Callable[[T, R], Awaitable[None]]) -> Consumer[T, R]:
        return Consumer(durable, parse, handle, batched=False, concurrency=concurrency, on_dead_letter=on_dead_letter)
    return declare


def consumes_batches(durable: Durable, *, parse: Callable[[Msg], T], batch_size: int = 1000,
                     on_dead_letter: DeadLetterHook | None = None
                     ) -> Callable[[Callable[[list[T], R], Awaitable[None]]], Consumer[T, R]]:
    def declare(handle: Callable[[list[T], R], Awaitable[None]]) -> Consumer[T, R]:
        return Consumer(durable, parse, handle, batched=True, batch_size=batch_size, on_dead_letter=on_dead_letter)
    return declare


class Running(Generic[T, R]):
    """One consumer at work in one process: the pull loop and the handlers in flight."""

    def __init__(self, consumer: Consumer[T, R], rt: R) -> None:
        self.c = consumer
        self.rt = rt
        self._running = True
        self._fetcher: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._sub: JetStreamContext.PullSubscription | None = None

    def start(self) -> None:
        self._fetcher = asyncio.create_task(self._run(), name=f"consume:{self.c.name}")

    async def stop(self, timeout: float) -> None:
        """Finish what is in hand (up to `timeout`); a fetch still waiting is cancelled at once."""
        self._running = False
        if self._fetcher is not None:
            self._fetcher.cancel()
            await asyncio.gather(self._fetcher, return_exceptions=True)
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=timeout)  # past it: redelivered after ack_wait
        if self._sub is not None:
            # Otherwise the connection's drain waits for fetched messages nobody takes.
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error:
                pass

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.c.concurrency)
        failures = 0
        while self._running:
            try:
                if self._sub is None:
                    self._sub = await self.rt.js.pull_subscribe_bind(self.c.durable.name, self.c.durable.stream)
                await self._pull(self._sub, slots)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any server, election or reconnect
                failures += 1
                log.warning("consume.fetch_failed", extra={"consumer": self.c.name, "error": type(exc).__name__,
                                                           "attempt": failures})
                await asyncio.sleep(backoff(failures, base=0.25, cap=5.0))

    async def _pull(self, sub: JetStreamContext.PullSubscription, slots: asyncio.Semaphore) -> None:
        """One fetch for as many messages as there are free slots (a batch takes one slot)."""
        await slots.acquire()
        taken = 1
        if not self.c.batched:
            while taken < self.c.concurrency and not slots.locked():
                await slots.acquire()
                taken += 1
        want = self.c.batch_size if self.c.batched else taken
        try:
            msgs = await sub.fetch(want, timeout=IDLE_WAIT)
        except FETCH_TIMEOUTS:  # nothing to do; also what a fetch meets while the consumer has no leader
            msgs = []
        except BaseException:
            for _ in range(taken):
                slots.release()
            raise
        if self.c.batched:
            groups = [msgs] if msgs else []
        else:
            groups = [[m] for m in msgs]
        for _ in range(taken - len(groups)):
            slots.release()
        for group in groups:
            task = asyncio.create_task(self._settle(group, slots))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _settle(self, msgs: list[Msg], slots: asyncio.Semaphore) -> None:
        try:
            if self.c.batched:
                await self._batch(msgs)
            else:
                for m in msgs:
                    await self._single(m)
        except Exception:
            log.exception("consume.settle_failed", extra={"consumer": self.c.name, "size": len(msgs)})
        finally:
            slots.release()

    # --- one message ------------------------------------------------------------------------------------------
    async def _single(self, msg: Msg) -> None:
        try:
            item = self.c.parse(msg)
        except Invalid as exc:
            await self._dead(msg, str(exc))
            return
        t0 = time.perf_counter()
        try:
            await self.c.handle(item, self.rt)
        except Exception as exc:  # noqa: BLE001 - settled: retried or dead-lettered, never lost
            await self._failed(msg, exc)
            return
        finally:
            HANDLING.labels(self.c.name).observe(time.perf_counter() - t0)
        await msg.ack()
        CONSUMED.labels(self.c.name, "ok").inc()

    async def _failed(self, msg: Msg, exc: BaseException) -> None:
        n = msg.metadata.num_delivered or 1
        error = f"{type(exc).__name__}: {exc}"
        if is_transient(exc):
            action = "retry_transient"
            await msg.nak(delay=backoff(n))
        elif is_permanent(exc) or n >= MAX_ATTEMPTS:
            action = "dead_lettered"
            await self._dead(msg, error)
        else:
            # Not an outage: a fault in this message, which waiting rarely cures. Retry at once-ish, so it holds the
            # messages behind it for under a second before it is dead-lettered, not for seconds.
            action = "retry"
            await msg.nak(delay=backoff(n, base=RETRY_BASE))
        log.warning("consume.failed", extra={"consumer": self.c.name, "subject": msg.subject, "attempt": n,
                                             "action": action, "error": error[:500]})
        if action != "dead_lettered":
            CONSUMED.labels(self.c.name, action).inc()

    async def _dead(self, msg: Msg, reason: str) -> None:
        """The consumer's own bookkeeping (best effort), then the store, then TERM. If the store cannot be written
        (the database is away) the message comes back later: nothing is dropped."""
        if self.c.on_dead_letter is not None:
            try:
                await self.c.on_dead_letter(msg, reason, self.rt)
            except Exception:
                log.exception("consume.dead_letter_hook_failed", extra={"consumer": self.c.name})
        try:
            await dead_letter(self.rt.pool, self.rt.js, self.c.name, msg, reason)
        except Exception:
            log.exception("deadletter.write_failed", extra={"consumer": self.c.name})
            await msg.nak(delay=60)
            CONSUMED.labels(self.c.name, "retry_dead_letter_failed").inc()
            return
        await msg.term()
        CONSUMED.labels(self.c.name, "dead_lettered").inc()

    # --- a batch ----------------------------------------------------------------------------------------------
    async def _batch(self, msgs: list[Msg]) -> None:
        good: list[tuple[Msg, T]] = []
        bad: list[tuple[Msg, str]] = []
        for m in msgs:
            try:
                good.append((m, self.c.parse(m)))
            except Invalid as exc:
                bad.append((m, str(exc)))
        if good:
            t0 = time.perf_counter()
            try:
                await self.c.handle([item for _, item in good], self.rt)
            except Exception as exc:  # noqa: BLE001
                if is_transient(exc):
                    attempt = max(m.metadata.num_delivered or 1 for m, _ in good)
                    log.warning("consume.batch_retry", extra={"consumer": self.c.name, "size": len(good),
                                                              "error": f"{type(exc).__name__}: {exc}"[:300]})
                    for m, _ in good:
                        await m.nak(delay=backoff(attempt))
                    CONSUMED.labels(self.c.name, "retry_transient").inc(len(good))
                    good = []
                else:
                    log.warning("consume.batch_isolating", extra={"consumer": self.c.name, "size": len(good),
                                                                  "error": type(exc).__name__})
                    good, refused = await self._one_by_one(good)
                    bad += refused
            finally:
                HANDLING.labels(self.c.name).observe(time.perf_counter() - t0)
        for m, _ in good:
            await m.ack()
        CONSUMED.labels(self.c.name, "ok").inc(len(good))
        for m, reason in bad:
            await self._dead(m, reason)

    async def _one_by_one(self, items: Sequence[tuple[Msg, T]]) -> tuple[list[tuple[Msg, T]], list[tuple[Msg, str]]]:
        """Each message in its own call; the ones that still fail are dead-lettered with their error."""
        ok: list[tuple[Msg, T]] = []
        refused: list[tuple[Msg, str]] = []
        for m, item in items:
            try:
                await self.c.handle([item], self.rt)
                ok.append((m, item))
            except Exception as exc:  # noqa: BLE001
                if is_transient(exc):
                    await m.nak(delay=backoff(1))
                else:
                    refused.append((m, f"{type(exc).__name__}: {exc}"[:500]))
        return ok, refused
