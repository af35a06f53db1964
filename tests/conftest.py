"""Real servers for the suite: embedded NATS and PostgreSQL unless NATS_URL / DATABASE_URL point at running ones."""
from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats
import pytest

from dev.embedded import EmbeddedNats, EmbeddedPostgres
from shared import topology
from shared.db import connect
from shared.db.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output"


@dataclass(frozen=True)
class Servers:
    nats_url: str
    database_url: str  # the maintenance database; tests get their own (see `database_url`)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    started: list[EmbeddedNats | EmbeddedPostgres] = []
    nats_url = os.environ.get("NATS_URL")
    database_url = os.environ.get("DATABASE_URL")
    try:
        if not nats_url:
            server = EmbeddedNats(tmp_path_factory.mktemp("nats"), sync_always=False)
            started.append(server)
            nats_url = server.start()
        if not database_url:
            pg = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"), durable=False)
            started.append(pg)
            database_url = pg.start()
        yield Servers(nats_url, database_url)
    finally:
        from tests.e2e.procs import kill_leftovers

        kill_leftovers()
        for server in reversed(started):
            server.stop()


async def _admin(servers: Servers) -> asyncpg.Connection:
    return await asyncpg.connect(servers.database_url)


@pytest.fixture(scope="session")
def template_db(servers: Servers) -> str:
    """A migrated database that each test's database is cloned from (CREATE DATABASE ... TEMPLATE is ~20 ms)."""
    import asyncio

    name = f"tmpl_{uuid.uuid4().hex[:8]}"

    async def build() -> None:
        admin = await _admin(servers)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        await migrate(with_database(servers.database_url, name))

    asyncio.run(build())
    return name


async def new_database(servers: Servers, template: str | None = None) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await _admin(servers)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await admin.close()
    return with_database(servers.database_url, name)


async def drop_database(servers: Servers, url: str) -> None:
    admin = await _admin(servers)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path.lstrip("/")}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(servers: Servers, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own."""
    url = await new_database(servers, template_db)
    yield url
    await drop_database(servers, url)


@pytest.fixture
async def empty_database_url(servers: Servers) -> AsyncIterator[str]:
    url = await new_database(servers)
    yield url
    await drop_database(servers, url)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def nc(servers: Servers) -> AsyncIterator[nats.NATS]:
    conn = await nats.connect(topology.servers(servers.nats_url))
    yield conn
    await conn.close()


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    path = OUTPUT / request.node.name.replace("/", "_")
    path.mkdir(parents=True, exist_ok=True)
    return path
