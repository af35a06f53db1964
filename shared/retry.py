"""What a failure means and how long to wait before trying again: one classification, one backoff formula.

Transient faults (database or network down) are retried for as long as they last: an outage must never dead-letter a
good message. Anything else is retried `MAX_ATTEMPTS` times, then dead-lettered. `PermanentError` skips the retries.
"""
from __future__ import annotations

import asyncio
import random

import asyncpg
from nats.errors import Error as NatsError

MAX_ATTEMPTS = 5
TRANSIENT = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.TooManyConnectionsError,
             asyncpg.InterfaceError, asyncpg.CannotConnectNowError, asyncpg.DeadlockDetectedError,
             asyncpg.SerializationError, NatsError)


class PermanentError(Exception):
    """Retrying cannot help (a malformed payload): dead-letter at once."""


# The database refused the values themselves (out of range, not in the encoding): the same message fails the same way.
PERMANENT = (PermanentError, asyncpg.DataError)


def is_permanent(exc: BaseException) -> bool:
    return isinstance(exc, PERMANENT)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT) and not isinstance(exc, PermanentError)


def backoff(attempt: int, *, base: float = 0.5, cap: float = 60.0, jitter: bool = False) -> float:
    """base · 2^(attempt-1), capped; with jitter, uniform in [half, all] of it, so retrying processes spread out."""
    delay = min(cap, base * 2 ** min(max(attempt, 1) - 1, 16))
    return random.uniform(delay / 2, delay) if jitter else delay


class Invalid(PermanentError):
    """A message that cannot become the handler's model: dead-lettered at once, with this reason."""
