import uuid

import nats

from nats.js.api import StorageType

from shared import topology


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
    assert billing.max_ack_pending == 1 and billing.durable_name == "billing"
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
