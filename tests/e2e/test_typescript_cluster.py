"""The TypeScript client on a 3-node JetStream cluster with R3 streams: while a Node process publishes usage events at
a steady pace (some of them twice), the node leading USAGE, the one the client is connected to, is SIGKILLed and
brought back. The client rides the reconnect and the election by retrying with the same Nats-Msg-Id: no publish
fails, and USAGE holds each event id exactly once."""
from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from polar_billing_client.subjects import USAGE_SUBJECT_PREFIX

from shared import topology
from tests.e2e.test_typescript_client import NODE, NPM, PACKAGE, run
from tests.support.cluster import bring_back, kill_leader, leader_of, nats_cluster

EVENTS = 3_000  # distinct event ids, at RATE a second; every 10th sent again a second later
RATE = 250
SCRIPT = "dist-test/cluster-publish.js"  # clients/typescript/test/cluster-publish.ts, built


@pytest.fixture(scope="module")
def built_client() -> Path:
    """The package and its test scripts built in place: the script imports the client by its name (dist/)."""
    if not (NODE and NPM):
        pytest.skip("node and npm are needed to test the TypeScript client")
    run(NPM, "ci", "--no-audit", "--no-fund", cwd=PACKAGE)
    run(NPM, "run", "build", cwd=PACKAGE)
    run(NPM, "run", "build:test", cwd=PACKAGE)
    return PACKAGE


async def move_leader(nc: nats.NATS, js: JetStreamContext, stream: str, server: str) -> None:
    """Make `server` lead `stream` (a step-down with a preferred successor), so that killing the leader also cuts
    the client's connection."""
    deadline = time.monotonic() + 30
    while (leader := await leader_of(js, stream)) != server:
        assert time.monotonic() < deadline, f"{stream} still led by {leader}, not {server}"
        body = json.dumps({"placement": {"preferred": server}}).encode()
        await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", body, timeout=5)
        await asyncio.sleep(0.5)


async def stored_event_ids(js: JetStreamContext, stream: str, expected: int) -> list[str]:
    """Every message's Nats-Msg-Id, read back through an ordered consumer."""
    sub = await js.subscribe(f"{USAGE_SUBJECT_PREFIX}.>", stream=stream, ordered_consumer=True)
    ids: list[str] = []
    try:
        while len(ids) < expected:
            msg = await sub.next_msg(timeout=10)
            ids.append((msg.headers or {}).get("Nats-Msg-Id", ""))
    finally:
        await sub.unsubscribe()
    return ids


async def test_killing_the_usage_leader_under_the_typescript_client_loses_and_doubles_nothing(
        built_client: Path, tmp_path: Path) -> None:
    assert NODE  # built_client skipped otherwise
    tag = uuid.uuid4().hex[:8]
    stream = topology.USAGE.name
    with nats_cluster(tmp_path / "nats") as cluster:
        await topology.apply(cluster.url, replicas=3)
        nc = await nats.connect(topology.servers(cluster.url), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = nc.jetstream(timeout=5)
        stderr = (tmp_path / "node.stderr").open("w")
        node = await asyncio.create_subprocess_exec(
            NODE, SCRIPT, cwd=built_client, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=stderr, env={**os.environ, "NATS_URL": cluster.url, "RUN_TAG": tag, "EVENTS": str(EVENTS),
                                "RATE": str(RATE), "NODE_NO_WARNINGS": "1",
                                # The default timeout, and twice the default window: an election on a 2-core CI
                                # machine has taken up to 10.4 s of the 15. Both "2000" (no retry) make hundreds of
                                # publishes fail.
                                "PUBLISH_TIMEOUT_MS": "", "PUBLISH_RETRY_FOR_MS": "30000"})
        try:
            assert node.stdin and node.stdout
            connected = json.loads(await asyncio.wait_for(node.stdout.readline(), 30))["connected"]
            await move_leader(nc, js, stream, connected)

            node.stdin.write(b"go\n")
            await node.stdin.drain()
            node.stdin.close()
            await asyncio.sleep(3)  # a quarter of the run
            killed = await kill_leader(cluster, js, stream)
            killed_at = time.monotonic()
            while await leader_of(js, stream) == connected:
                await asyncio.sleep(0.2)
            print(f"\nnew USAGE leader after {time.monotonic() - killed_at:.1f}s")
            await bring_back(cluster, killed)

            out, _ = await asyncio.wait_for(node.communicate(), 60)
            assert node.returncode == 0, (tmp_path / "node.stderr").read_text()[-4000:]
            report = json.loads(out.decode().strip().splitlines()[-1])
            print(f"node: {report}")

            assert report["failed"] == 0, report
            assert report["sent"] == EVENTS + report["republished"] and report["republished"] > 0
            assert report["maxLatencyMs"] > 1000, report  # some publishes did wait out the election
            assert (await js.stream_info(stream)).state.messages == EVENTS
            ids = await stored_event_ids(js, stream, EVENTS)
            assert len(ids) == len(set(ids)) == EVENTS
            assert set(ids) == {f"ev_{tag}_{i}" for i in range(EVENTS)}
        finally:
            if node.returncode is None:
                node.kill()
                await node.wait()
            stderr.close()
            await nc.close()
