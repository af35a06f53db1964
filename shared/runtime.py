"""What a running service holds, typed: every service has one subclass (settings of its own class, its catalog,
its Polar client, its wake-up events) and passes it to its handlers explicitly."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext

from shared.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(kw_only=True)
class Runtime(Generic[S]):
    name: str
    settings: S
    nc: Client
    js: JetStreamContext
    pool: asyncpg.Pool
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    clock: Callable[[], datetime] = utcnow  # tests move time by replacing it

    def now(self) -> datetime:
        return self.clock()


@dataclass(frozen=True)
class Connections:
    """What the service shell opened before the runtime is built."""

    name: str
    nc: Client
    js: JetStreamContext
    pool: asyncpg.Pool
    stopping: asyncio.Event

    def fields(self) -> dict[str, Any]:
        """The runtime's base fields: `BillingRuntime(**conns.fields(), settings=…, …)`."""
        return {"name": self.name, "nc": self.nc, "js": self.js, "pool": self.pool, "stopping": self.stopping}
