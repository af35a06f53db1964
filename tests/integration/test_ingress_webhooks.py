"""The webhook edge: what Polar gets back, and what is (and is not) stored in JetStream."""
from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import nats
import pytest

from tests.conftest import Servers
from tests.e2e.procs import ServiceProcess, base_env, start_service
from tests.support.webhooks import body_of, example, sign

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(scope="module")
def ingress(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = base_env(NATS_URL=servers.nats_url, DATABASE_URL=servers.database_url, POLAR_WEBHOOK_SECRET=SECRET)
    svc = start_service("ingress", env, tmp_path_factory.mktemp("ingress"))
    svc.wait_ready()
    yield svc
    assert svc.stop() == 0
    assert SECRET not in svc.log.read_text()
    assert SECRET.removeprefix("whsec_") not in svc.log.read_text()


def post(ingress: ServiceProcess, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{ingress.url}/webhooks/polar", content=body, headers=headers, timeout=10)


async def stored(nc: nats.NATS, webhook_id: str) -> list[nats.aio.msg.Msg]:
    """Every message in POLAR_WEBHOOKS carrying this webhook id."""
    js = nc.jetstream()
    sub = await js.subscribe("polar.webhook.>", ordered_consumer=True, deliver_policy=nats.js.api.DeliverPolicy.ALL)
    found, last = [], (await js.stream_info("POLAR_WEBHOOKS")).state.last_seq
    try:
        while True:
            msg = await sub.next_msg(timeout=2)
            if msg.headers and msg.headers.get("Nats-Msg-Id") == webhook_id:
                found.append(msg)
            if msg.metadata.sequence.stream >= last:
                break
    except nats.errors.TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return found


@pytest.mark.parametrize("scheme", ["standard", "legacy"])
async def test_a_signed_webhook_is_stored_once_with_its_id_and_answered_202(ingress, nc, scheme: str) -> None:
    body = body_of(example("subscription.updated"))
    headers = sign(SECRET, body, scheme=scheme)
    first = post(ingress, body, headers)
    again = post(ingress, body, headers)  # Polar's retry: same id, same body
    assert first.status_code == 202 and first.json() == {"stored": True, "duplicate": False}
    assert again.status_code == 202 and again.json()["duplicate"] is True
    [msg] = await stored(nc, headers["webhook-id"])
    assert msg.subject == "polar.webhook.subscription.updated"
    assert msg.data == body
    assert msg.headers["webhook-timestamp"] == headers["webhook-timestamp"]


async def test_one_valid_signature_among_several_is_enough(ingress, nc) -> None:
    body = body_of(example("order.paid"))
    headers = sign(SECRET, body)
    headers["webhook-signature"] = f"v1,{'A' * 44} v2,whatever {headers['webhook-signature']}"
    assert post(ingress, body, headers).status_code == 202
    assert len(await stored(nc, headers["webhook-id"])) == 1


async def test_an_unknown_event_type_is_stored_and_answered_2xx(ingress, nc) -> None:
    body = body_of({"type": "member.created", "timestamp": "2026-09-01T12:00:00Z", "data": {"id": "m1"}})
    headers = sign(SECRET, body)
    assert post(ingress, body, headers).status_code == 202
    [msg] = await stored(nc, headers["webhook-id"])
    assert msg.subject == "polar.webhook.member.created"


def _tamper(kind: str) -> tuple[bytes, dict[str, str]]:
    body = body_of(example("subscription.active"))
    if kind == "wrong_secret":
        return body, sign("whsec_" + "b3RoZXJzZWNyZXRvdGhlcnNlY3JldA==", body)
    if kind == "tampered_body":
        return body.replace(b'"active"', b'"revoked"', 1), sign(SECRET, body)
    if kind == "stale":
        return body, sign(SECRET, body, ts=time.time() - 360)
    if kind == "future":
        return body, sign(SECRET, body, ts=time.time() + 360)
    headers = sign(SECRET, body)
    if kind == "malformed_signature_header":
        headers["webhook-signature"] = "garbage-without-a-comma"
    elif kind == "bad_base64":
        headers["webhook-signature"] = "v1,@@not base64@@"
    elif kind == "bad_timestamp":
        headers["webhook-timestamp"] = "yesterday"
    return body, headers


@pytest.mark.parametrize(
    "kind", ["wrong_secret", "tampered_body", "stale", "future", "malformed_signature_header", "bad_base64",
             "bad_timestamp"])
async def test_a_bad_signature_is_403_and_nothing_is_published(ingress, nc, kind: str) -> None:
    body, headers = _tamper(kind)
    resp = post(ingress, body, headers)
    assert resp.status_code == 403, resp.text
    assert resp.json()["detail"].startswith("signature verification failed")
    assert await stored(nc, headers["webhook-id"]) == []


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
async def test_a_missing_header_is_400_naming_it(ingress, nc, missing: str) -> None:
    body = body_of(example("subscription.active"))
    headers = sign(SECRET, body)
    webhook_id = headers["webhook-id"]
    del headers[missing]
    resp = post(ingress, body, headers)
    assert resp.status_code == 400 and missing in resp.json()["detail"]
    assert await stored(nc, webhook_id) == []


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b"not json at all", 400, "body is not JSON"),
        (b'{"data": {}}', 400, "body has no event type"),
        (b'["a list"]', 400, "body has no event type"),
        (b'{"type": "subscription.*", "data": {}}', 400, "event type is not of the form word.word"),
    ],
)
async def test_a_signed_body_that_is_not_a_polar_event_is_400(ingress, nc, body: bytes, status: int, detail: str) -> None:
    headers = sign(SECRET, body)
    resp = post(ingress, body, headers)
    assert (resp.status_code, resp.json()["detail"]) == (status, detail)
    assert await stored(nc, headers["webhook-id"]) == []


async def test_a_body_over_1_mib_is_413(ingress, nc) -> None:
    payload = example("order.paid")
    payload["data"]["metadata"] = {"pad": "x" * (1024 * 1024)}
    body = body_of(payload)
    headers = sign(SECRET, body)
    assert post(ingress, body, headers).status_code == 413
    assert await stored(nc, headers["webhook-id"]) == []
