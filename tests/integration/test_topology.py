import asyncio
import uuid
from collections.abc import Iterator

import nats
import pytest
from nats.js.api import StorageType

from dev.embedded import EmbeddedNatsCluster
from shared import topology
from tests.support.cluster import nats_cluster


async def _snapshot(js):
    streams = {s.name: (await js.stream_info(s.name)) for s in topology.STREAMS}
    consumers = {d.name: (await js.consumer_info(d.stream, d.name)) for d in topology.DURABLES}
    return (
        {n: (i.config, i.created) for n, i in streams.items()},
        {n: (i.config, i.created) for n, i in consumers.items()},
    )


async def test_applying_the_topology_twice_changes_nothing(nc: nats.NATS) -> None:
    js = nc.jetstream()
    await topology.ensure_topology(js)
    before = await _snapshot(js)
    await topology.ensure_topology(js)
    assert await _snapshot(js) == before


async def test_streams_are_on_file_storage_with_the_promised_windows(nc: nats.NATS) -> None:
    js = nc.jetstream()
    await topology.ensure_topology(js)
    webhooks = (await js.stream_info("POLAR_WEBHOOKS")).config
    assert webhooks.storage == StorageType.FILE
    assert webhooks.duplicate_window >= 3600
    assert webhooks.subjects == ["polar.webhook.>"]
    billing = (await js.consumer_info("POLAR_WEBHOOKS", "billing")).config
    assert billing.max_ack_pending >= 64 and billing.durable_name == "billing"
    usage = (await js.consumer_info("USAGE", "usage-sync")).config
    assert usage.filter_subject == "usage.event.>" and usage.max_ack_pending >= 2000


async def test_a_drifted_stream_is_put_back(nc: nats.NATS) -> None:
    js = nc.jetstream()
    await topology.ensure_topology(js)
    drifted = (await js.stream_info("BILLING_EVENTS")).config
    drifted.duplicate_window = 120  # what a FastStream JStream with defaults would do
    await js.update_stream(drifted)
    await topology.ensure_topology(js)
    assert (await js.stream_info("BILLING_EVENTS")).config.duplicate_window == topology.BILLING_EVENTS.duplicate_window


async def test_a_repeated_msg_id_inside_the_window_is_stored_once(nc: nats.NATS) -> None:
    js = nc.jetstream()
    await topology.ensure_topology(js)
    subject = topology.webhook_subject("subscription.updated")
    msg_id = f"wh_{uuid.uuid4().hex}"
    before = (await js.stream_info("POLAR_WEBHOOKS")).state.messages
    first = await js.publish(subject, b'{"type":"subscription.updated"}', headers={"Nats-Msg-Id": msg_id})
    again = await js.publish(subject, b'{"type":"subscription.updated"}', headers={"Nats-Msg-Id": msg_id})
    assert not first.duplicate and again.duplicate and again.seq == first.seq
    assert (await js.stream_info("POLAR_WEBHOOKS")).state.messages == before + 1
    stored = await js.get_msg("POLAR_WEBHOOKS", first.seq)
    assert stored.headers["Nats-Msg-Id"] == msg_id


# --- replicas, on a 3-node cluster --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNatsCluster]:
    with nats_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


async def _replicas(js) -> dict[str, tuple[int, int]]:
    """name -> (configured replicas, peers besides the leader) of every stream and durable."""
    out = {}
    for s in topology.STREAMS:
        info = await js.stream_info(s.name)
        out[s.name] = (info.config.num_replicas, len(info.cluster.replicas or []))
    for d in topology.DURABLES:
        info = await js.consumer_info(d.stream, d.name)
        out[d.name] = (info.config.num_replicas, len(info.cluster.replicas or []))
    return out


async def _eventually_replicas(js, want: set[tuple[int, int]], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (got := set((await _replicas(js)).values())) != want:
        assert asyncio.get_running_loop().time() < deadline, got
        await asyncio.sleep(0.1)


async def test_replicas_are_raised_from_1_to_3_in_place_and_applying_again_changes_nothing(
        cluster: EmbeddedNatsCluster) -> None:
    nc = await nats.connect(topology.servers(cluster.url))
    try:
        js = nc.jetstream(timeout=10)
        await topology.ensure_topology(js, 1)
        assert set((await _replicas(js)).values()) == {(1, 0)}
        # What the raise must keep: the stored messages and where the durable stands.
        for i in range(10):
            await js.publish(topology.webhook_subject("subscription.updated"), b"{}", headers={"Nats-Msg-Id": f"r{i}"})
        sub = await js.pull_subscribe_bind(topology.BILLING_WEBHOOKS.name, topology.POLAR_WEBHOOKS.name)
        for m in await sub.fetch(4, timeout=5):
            await m.ack_sync()
        await sub.unsubscribe()
        before = await js.consumer_info(topology.POLAR_WEBHOOKS.name, topology.BILLING_WEBHOOKS.name)

        await topology.ensure_topology(js, 3)
        await _eventually_replicas(js, {(3, 2)})  # the peers are placed a moment after the update answered
        after = await js.consumer_info(topology.POLAR_WEBHOOKS.name, topology.BILLING_WEBHOOKS.name)
        assert after.created == before.created and after.ack_floor.stream_seq == before.ack_floor.stream_seq == 4
        assert after.num_pending == 6
        assert (await js.stream_info(topology.POLAR_WEBHOOKS.name)).state.messages == 10

        raised = await _snapshot(js)
        await topology.ensure_topology(js, 3)
        await topology.ensure_topology(js)  # a process without NATS_STREAM_REPLICAS keeps R3
        assert await _snapshot(js) == raised

        await topology.ensure_topology(js, 1)  # and back down, consumers before their streams
        await _eventually_replicas(js, {(1, 0)})
        assert (await js.stream_info(topology.POLAR_WEBHOOKS.name)).state.messages == 10
    finally:
        await nc.close()


async def test_three_replicas_on_a_single_server_is_refused_naming_the_setting(nc: nats.NATS) -> None:
    with pytest.raises(RuntimeError, match="NATS_STREAM_REPLICAS=3 needs a JetStream cluster"):
        await topology.ensure_topology(nc.jetstream(), 3)
    await topology.ensure_topology(nc.jetstream())  # nothing was changed on the way
    assert (await nc.jetstream().stream_info("USAGE")).config.num_replicas == 1
