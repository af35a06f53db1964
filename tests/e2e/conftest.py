"""Fixtures shared by the end-to-end modules."""
from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from polar_billing_client.client import BillingClient

from shared.db import connect
from tests.conftest import Servers
from tests.e2e.usage_stack import reset_usage_consumer, stop_all, usage_env
from tests.support.emulator import start_emulator


@pytest.fixture
async def usage(servers: Servers, database_url: str, tmp_path) -> AsyncIterator[tuple]:
    """The emulator, usage-sync's environment, a client and a database connection; usage-sync is started by the test
    (start_usage_sync) and every one it started is stopped afterwards."""
    await reset_usage_consumer(servers.nats_url)
    (tmp_path / "emulator").mkdir()
    emulator = start_emulator(tmp_path / "emulator")
    env = usage_env(servers.nats_url, database_url, emulator)
    client = await BillingClient.connect(servers.nats_url)
    db = await connect(database_url)
    yield emulator, env, client, db
    stop_all()
    await db.close()
    await client.close()
    emulator.stop_or_kill()
