"""How a JetStream consumer settles a message that failed: retry with backoff, or dead-letter it with its reason.

Transient faults (database or network down) are retried forever: an outage must never dead-letter good messages.
Anything else is retried MAX_ATTEMPTS times, then handed to the consumer's dead-letter callback and terminated.
Nothing is dropped: if the dead-letter write itself fails, the message is retried later.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg
from faststream.nats.message import NatsMessage
from nats.errors import Error as NatsError

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
TRANSIENT = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.TooManyConnectionsError,
             asyncpg.InterfaceError, asyncpg.CannotConnectNowError, asyncpg.DeadlockDetectedError,
             asyncpg.SerializationError, NatsError)


class PermanentError(Exception):
    """Retrying cannot help (malformed payload): dead-letter at once."""


def backoff(attempt: int) -> float:
    return min(0.5 * 2 ** (max(attempt, 1) - 1), 60.0)


def attempt_of(msg: NatsMessage) -> int:
    return msg.raw_message.metadata.num_delivered or 1


async def settle_failure(msg: NatsMessage, exc: BaseException,
                         dead_letter: Callable[[BaseException, int], Awaitable[None]]) -> str:
    """Nack with backoff or dead-letter and terminate. Returns what was done, for logs and metrics."""
    n = attempt_of(msg)
    if isinstance(exc, TRANSIENT) and not isinstance(exc, PermanentError):
        await msg.nack(delay=backoff(n))
        return "retry_transient"
    if isinstance(exc, PermanentError) or n >= MAX_ATTEMPTS:
        try:
            await dead_letter(exc, n)
        except Exception:  # noqa: BLE001 - never drop a message because the dead-letter write failed
            log.exception("deadletter.write_failed")
            await msg.nack(delay=60)
            return "retry_deadletter_failed"
        await msg.reject()
        return "dead_lettered"
    await msg.nack(delay=backoff(n))
    return "retry"
