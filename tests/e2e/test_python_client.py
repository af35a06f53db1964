"""The Python client as a chat service installs it: `pip install ./clients/python` into a virtual environment of its
own (nothing else of this repository importable), against the whole backend as processes."""
from __future__ import annotations

import asyncio
import html
import json
import os
import re
import subprocess
import time
import tomllib
import uuid
import venv
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from polar_billing_client.client import BillingClient

from shared.db import connect
from shared.periods import day_of
from tests.conftest import Servers, drop_database, new_database
from tests.e2e.client_stack import ClientStack, start_client_stack
from tests.e2e.procs import ROOT
from tests.e2e.stack import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")
SCENARIO = Path(__file__).parent / "client_scenarios" / "python_scenario.py"
UNUSUAL_IDS = ["ada.lovelace+test@example.com", "org.42/user 7 é"]


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with only the client package (and what it declares) installed."""
    where = tmp_path_factory.mktemp("client-venv")
    outside = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # make test exports the repository's
    venv.EnvBuilder(with_pip=True).create(where)
    python = where / "bin" / "python"
    build = tmp_path_factory.mktemp("client-build")
    res = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          str(ROOT / "clients" / "python")], capture_output=True, text=True, timeout=300,
                         cwd=build, env=outside, check=False)
    if res.returncode != 0 and "Could not find a version" in res.stderr + res.stdout:
        pytest.skip(f"cannot install the client's dependencies here: {res.stderr[-300:]}")
    assert res.returncode == 0, res.stderr[-2000:]
    shadow = subprocess.run([str(python), "-c", "import shared"], capture_output=True, cwd=build, env=outside,
                            check=False)
    assert shadow.returncode != 0, "the repository leaked into the client's environment"
    return python


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ClientStack]:
    db_url = await new_database(servers)
    from shared.db.migrate import migrate

    await migrate(db_url)
    s = await start_client_stack(servers.nats_url, db_url, tmp_path_factory.mktemp("client-stack"))
    yield s
    s.stop()
    await drop_database(servers, db_url)


def run(python: Path, stack: ClientStack, step: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NATS_URL", "DATABASE_URL")}
    res = subprocess.run([str(python), str(SCENARIO), step], capture_output=True, text=True, timeout=120,
                         cwd=python.parent,  # not the repository: only the installed client is importable
                         env={**clean, "NATS_URL": stack.nats_url, "INGRESS_URL": stack.ingress_url,
                              "STATUS_PAGE_SECRET": stack.status_page_secret, **env}, check=False)
    assert res.returncode == 0, f"{step}: {res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


async def test_a_free_users_day_through_the_installed_client(client_python: Path, stack: ClientStack) -> None:
    seen = run(client_python, stack, "limits", USER_ID=f"usr_py_{uuid.uuid4().hex[:10]}")
    assert seen == {"admitted": 1, "reason": "messages_per_day", "thresholds": [["messages_per_day", 80]]}


async def test_any_user_id_goes_through_usage_ledger_polar_and_the_status_page(client_python: Path,
                                                                               stack: ClientStack) -> None:
    seen = run(client_python, stack, "ids", USER_IDS=json.dumps(UNUSUAL_IDS))
    db = await connect(stack.database_url)
    try:
        rows = await db.fetch("SELECT user_id, billable_tokens FROM usage_events WHERE user_id = ANY($1::text[])",
                              UNUSUAL_IDS)
    finally:
        await db.close()
    assert sorted((r["user_id"], r["billable_tokens"]) for r in rows) == sorted((u, 42) for u in UNUSUAL_IDS)
    async with httpx.AsyncClient(timeout=10) as http:
        deadline = time.monotonic() + 30
        while True:
            events = (await http.get(f"{stack.emulator.url}/__emulator__/events")).json()["events"]
            at_polar = {e["external_customer_id"] for e in events}
            if set(UNUSUAL_IDS) <= at_polar or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        assert set(UNUSUAL_IDS) <= at_polar
        for user_id, url in seen["pages"].items():
            page = await http.get(url)
            assert page.status_code == 200, (user_id, page.status_code)
            assert "Free" in page.text and "42" in page.text
        # The checkout Polar opened is for the user id exactly as the product spells it.
        for user_id, url in seen["checkouts"].items():
            page = await http.get(url)
            assert page.status_code == 200 and html.escape(user_id) in page.text, (user_id, page.text[:500])


async def test_with_billing_stopped_each_policy_does_what_it_says(client_python: Path, stack: ClientStack) -> None:
    user_id = f"usr_py_out_{uuid.uuid4().hex[:8]}"
    db = await connect(stack.database_url)
    start, end = day_of(datetime.now(UTC))
    try:  # the user is at their 100 messages today: billing's last answer is a refusal
        await db.execute("INSERT INTO usage_counters (user_id, limit_name, period_start, period_end, used) "
                         "VALUES ($1, 'messages_per_day', $2, $3, 100)", user_id, start, end)
    finally:
        await db.close()
    try:
        seen = run(client_python, stack, "outage", USER_ID=user_id, BILLING_PID=str(stack.billing.proc.pid))
    finally:
        stack.billing.proc.wait(15)
        stack.start_billing()
    assert seen == {"raise": "BillingUnavailable", "allow": True, "deny": "unavailable",
                    "last_known": "messages_per_day", "stale": "unavailable"}


async def test_the_client_package_declares_only_nats_and_pydantic() -> None:
    meta = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())["project"]
    assert sorted(re.split(r"[<>=\[ ]", d)[0] for d in meta["dependencies"]) == ["nats-py", "pydantic"]
    assert [re.split(r"[<>=\[ ]", d)[0] for d in meta["optional-dependencies"]["metrics"]] == ["prometheus_client"]


def readme_snippet(language: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it from your chat service", 1)[1].split("\n## ", 1)[0]
    return section.split(f"```{language}\n", 1)[1].split("```", 1)[0]


async def test_the_readme_python_snippet_runs_as_written(client_python: Path, stack: ClientStack,
                                                        tmp_path: Path) -> None:
    script = tmp_path / "readme_snippet.py"
    script.write_text(readme_snippet("python"))
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATABASE_URL")}
    res = subprocess.run([str(client_python), str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={**clean, "NATS_URL": stack.nats_url, "INGRESS_URL": stack.ingress_url,
                              "STATUS_PAGE_SECRET": stack.status_page_secret}, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    plan, used, url = res.stdout.split()
    assert plan == "free" and int(used) in (2000, 812 + 96)  # the hold's estimate until the event settles it
    async with httpx.AsyncClient() as http:
        assert (await http.get(url)).status_code == 200
    client = await BillingClient.connect(stack.nats_url)
    try:
        async def settled() -> bool:
            status = await client.status("ada.lovelace@example.com")
            return status.limits["tokens_per_month"].used == 812 + 96

        assert await eventually(settled)
    finally:
        await client.close()
