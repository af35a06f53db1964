"""The TypeScript client (clients/typescript) as a chat service installs it: built, packed, installed from its tarball
into an empty Node project (so only its declared dependencies are there), and its tests run there with `node --test`
against the whole backend: the live scenario over NATS and HTTP, then the policies with billing stopped."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import nats
import pytest
import pytest_asyncio
from polar_billing_client import links
from polar_billing_client.subjects import BILLING_EVENTS_STREAM, subject_token

from dev import ts_contracts
from shared.db.migrate import migrate
from tests.conftest import ROOT, Servers, drop_database, new_database
from tests.e2e.client_stack import ClientStack, start_client_stack

PACKAGE = ROOT / "clients" / "typescript"
NODE, NPM = shutil.which("node"), shutil.which("npm")
DURABLE_PREFIX = "ts-e2e-"  # test/live.test.ts
SPECIAL_USERS = ["ada.lovelace+test@example.com", "team/ops Zoë é"]  # '.', '+', '@'; '/', spaces, non-ASCII



def run(*cmd: str, cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def node_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package built and packed, installed by its tarball in a fresh project, with the compiled tests beside it."""
    if not (NODE and NPM):
        pytest.skip("node and npm are needed to test the TypeScript client")
    run(NPM, "ci", "--no-audit", "--no-fund", cwd=PACKAGE)
    run(NPM, "run", "wire:check", cwd=PACKAGE)  # src/wire.ts is what the committed schema gives
    run(NPM, "run", "build", cwd=PACKAGE)
    run(NPM, "run", "build:test", cwd=PACKAGE)
    out = tmp_path_factory.mktemp("ts-client")
    packed = json.loads(run(NPM, "pack", "--json", "--ignore-scripts", "--pack-destination", str(out), cwd=PACKAGE))
    project = out / "project"
    project.mkdir()
    run(NPM, "init", "-y", cwd=project)
    (project / "package.json").write_text(
        json.dumps({**json.loads((project / "package.json").read_text()), "type": "module"}, indent=2))
    run(NPM, "install", "--no-audit", "--no-fund", str(out / packed[0]["filename"]), cwd=project)
    shutil.copytree(PACKAGE / "dist-test", project / "test")
    return project


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ClientStack]:
    db_url = await new_database(servers)
    await migrate(db_url)
    s = await start_client_stack(servers.nats_url, db_url, tmp_path_factory.mktemp("ts-stack"))
    yield s
    s.stop()
    await drop_database(servers, db_url)
    nc = await nats.connect(servers.nats_url)  # the Node tests' durables on BILLING_EVENTS
    try:
        js = nc.jetstream()
        for info in await js.consumers_info(BILLING_EVENTS_STREAM):
            if info.name.startswith(DURABLE_PREFIX):
                await js.delete_consumer(BILLING_EVENTS_STREAM, info.name)
    finally:
        await nc.close()


def node_env(s: ClientStack, **extra: str) -> dict[str, str]:
    return {**os.environ, "NATS_URL": s.nats_url, "INGRESS_URL": s.ingress_url, "API_KEY": s.api_key,
            "STATUS_PAGE_SECRET": s.status_page_secret, "NODE_NO_WARNINGS": "1", **extra}


def node_test(project: Path, file: str, env: dict[str, str], *, outage: Path | None = None,
              s: ClientStack | None = None) -> str:
    """`node --test` on one compiled test file; with `outage`, stops billing when the tests say they are ready."""
    assert NODE
    proc = subprocess.Popen([NODE, "--test", "--test-reporter=spec", "--test-timeout=120000", f"test/{file}"],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        if outage is not None and s is not None:
            deadline = time.monotonic() + 120
            while not (outage / "warm").exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if (outage / "warm").exists():
                s.stop_billing()
                (outage / "billing-stopped").touch()
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    sys.stdout.write(output)  # shown by pytest on failure
    counts = {k: int(v) for k, v in re.findall(r"^ℹ (tests|pass|fail) (\d+)$", output, re.MULTILINE)}
    assert proc.returncode == 0 and counts.get("fail") == 0, output[-6000:]
    assert counts["tests"] > 0 and counts["pass"] == counts["tests"], output[-6000:]
    return output


def test_committed_schema_matches_the_contracts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done = subprocess.run([sys.executable, "-m", "dev.ts_contracts", "--check"], check=False, cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    stale = tmp_path / "contracts.schema.json"  # and the check does see a difference
    stale.write_text(ts_contracts.render().replace('"cancel_at_period_end"', '"cancel_at_end"'))
    monkeypatch.setattr(ts_contracts, "SCHEMA", stale)
    assert ts_contracts.main(["--check"]) == 1


@pytest.mark.asyncio(loop_scope="module")
async def test_live_scenario_over_nats_and_http(node_project: Path, stack: ClientStack) -> None:
    now = int(time.time())
    expected = {"now": now, "users": [
        {"id": u, "subjectToken": subject_token(u),
         "statusPageUrl": f"{stack.ingress_url}/subscription/status?"
                          f"{urlencode({'token': links.sign(stack.status_page_secret, u, links.DEFAULT_TTL, now)})}"}
        for u in SPECIAL_USERS]}
    node_test(node_project, "live.test.js", node_env(stack, EXPECTED=json.dumps(expected)))


@pytest.mark.asyncio(loop_scope="module")
async def test_policies_with_billing_stopped(node_project: Path, stack: ClientStack, tmp_path: Path) -> None:
    try:
        node_test(node_project, "degraded.test.js", node_env(stack, OUTAGE_DIR=str(tmp_path)), outage=tmp_path,
                  s=stack)
        assert (tmp_path / "billing-stopped").exists()
    finally:
        if stack.billing.proc.poll() is not None:
            stack.start_billing()


async def test_the_readme_typescript_snippet_runs_as_written(node_project: Path, stack: ClientStack) -> None:
    """The README's `ts` block is plain modern JavaScript too: it runs as a module in the installed project."""
    text = (ROOT / "README.md").read_text().split("## Use it from your chat service", 1)[1].split("\n## ", 1)[0]
    (node_project / "readme.mjs").write_text(text.split("```ts\n", 1)[1].split("```", 1)[0])
    assert NODE
    out = subprocess.run([NODE, "readme.mjs"], cwd=node_project, env=node_env(stack), capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["free", "100"]
