"""polar-sdk against the emulator, as against Polar: bodies, errors, dedup, rate limits, signed webhooks."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from polar import PolarClientError, PolarNetworkError, PolarServerError
from polar.base import PolarRateLimitError
from polar.v2026_10 import PolarAsync
from polar.v2026_10 import errors as polar_errors
from polar.v2026_10.webhooks import validate_event
from standardwebhooks import Webhook

from polar_emulator.config import PRO_PRODUCT_ID, TEAM_PRODUCT_ID, TOKENS_METER_ID
from tests.e2e.procs import ServiceProcess
from tests.support.emulator import TOKEN, admin, start_emulator, webhook_receiver

SECRET = "whsec_" + "c2RrLXRlc3Qtc2VjcmV0LTMyLWJ5dGVzLWxvbmchIQ=="


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = start_emulator(tmp_path_factory.mktemp("emulator"), webhook_secret=SECRET)
    yield svc
    svc.stop()


@pytest.fixture(autouse=True)
def clean(emulator: ServiceProcess) -> None:
    admin(emulator, "DELETE", "faults")


def sdk(emulator: ServiceProcess, token: str = TOKEN, timeout: float = 5.0) -> PolarAsync:
    return PolarAsync(token, base_url=emulator.url, timeout=timeout)


def usage(external_id: str | None, user: str = "u1", tokens: int = 10, **extra) -> dict:
    ts = (datetime.now(UTC) - timedelta(seconds=2)).isoformat()
    event = {"name": "ai_usage", "external_customer_id": user, "timestamp": ts,
             "metadata": {"total_tokens": tokens, "model": "gpt-4o"}, **extra}
    if external_id is not None:
        event["external_id"] = external_id
    return event


async def test_ingest_deduplicates_across_and_within_batches_forever(emulator) -> None:
    a, b = f"e-{uuid.uuid4()}", f"e-{uuid.uuid4()}"
    async with sdk(emulator) as polar:
        first = await polar.events.ingest(events=[usage(a), usage(b), usage(a)])
        again = await polar.events.ingest(events=[usage(b), usage(None), usage(None)])
    assert (first.inserted, first.duplicates) == (2, 1)
    assert (again.inserted, again.duplicates) == (2, 1)  # events without external_id are never deduplicated
    seen = admin(emulator, "GET", "events").json()
    assert [e["external_id"] for e in seen["events"] if e.get("external_id") in (a, b)] == [a, b]
    assert seen["batches"][-2:] == [{"at": seen["batches"][-2]["at"], "size": 3, "inserted": 2, "duplicates": 1},
                                    {"at": seen["batches"][-1]["at"], "size": 3, "inserted": 2, "duplicates": 1}]


@pytest.mark.parametrize(
    ("bad", "loc_tail", "type_"),
    [
        ({"name": "x" * 129}, ["name"], "string_too_long"),
        ({"timestamp": "2026-01-01T00:00:00"}, ["timestamp"], "timezone_aware"),
        ({"timestamp": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}, ["timestamp"], "value_error"),
        ({"metadata": {"model": ""}}, ["metadata", "model"], None),
        ({"metadata": {"_llm": {"vendor": "openai"}}}, ["metadata", "_llm"], None),
        ({"metadata": {"_cost": {"amount": "1.5", "currency": "eur"}}}, ["metadata", "_cost"], None),
    ],
)
async def test_one_bad_event_refuses_the_whole_batch_with_its_index(emulator, bad, loc_tail, type_) -> None:
    ok, poison = usage(f"ok-{uuid.uuid4()}"), {**usage(f"bad-{uuid.uuid4()}"), **bad}
    async with sdk(emulator) as polar:
        with pytest.raises(polar_errors.HTTPValidationError) as exc:
            await polar.events.ingest(events=[ok, poison])
    detail = exc.value.error.detail
    assert detail and all(d.loc[:3] == ["body", "events", 1] for d in detail)
    assert any(d.loc[3:3 + len(loc_tail)] == loc_tail for d in detail), [d.loc for d in detail]
    if type_:
        assert any(d.type == type_ for d in detail)
    stored = {e.get("external_id") for e in admin(emulator, "GET", "events").json()["events"]}
    assert ok["external_id"] not in stored  # all or nothing


async def test_an_ingest_rule_rejects_the_matching_event_by_index(emulator) -> None:
    admin(emulator, "POST", "ingest-rules", json={"key": "model", "value": "forbidden"})
    async with sdk(emulator) as polar:
        with pytest.raises(polar_errors.HTTPValidationError) as exc:
            await polar.events.ingest(events=[usage("r1"), {**usage("r2"), "metadata": {"model": "forbidden"}}])
    assert exc.value.error.detail[0].loc == ["body", "events", 1]


@pytest.mark.parametrize(
    ("kind", "error"), [("500", PolarServerError), ("502", PolarServerError), ("drop", PolarNetworkError)])
async def test_injected_server_faults_raise_what_polar_would(emulator, kind, error) -> None:
    admin(emulator, "POST", "faults", json={"path": "/v1/events/ingest", "kind": kind, "count": 1})
    async with sdk(emulator) as polar:
        with pytest.raises(error):
            await polar.events.ingest(events=[usage(f"f-{uuid.uuid4()}")])
        ok = await polar.events.ingest(events=[usage(f"f-{uuid.uuid4()}")])  # only the next N fail
    assert ok.inserted == 1


async def test_a_hang_past_the_clients_timeout_is_a_network_error(emulator) -> None:
    admin(emulator, "POST", "faults", json={"path": "/v1/events/ingest", "kind": "timeout", "hang_seconds": 3})
    async with sdk(emulator, timeout=0.5) as polar:
        with pytest.raises(PolarNetworkError):
            await polar.events.ingest(events=[usage(f"t-{uuid.uuid4()}")])


async def test_an_injected_429_carries_retry_after(emulator) -> None:
    admin(emulator, "POST", "faults", json={"path": "/v1/checkouts/", "kind": "429", "retry_after": 7})
    async with sdk(emulator) as polar:
        with pytest.raises(PolarRateLimitError) as exc:
            await polar.checkouts.create(products=[PRO_PRODUCT_ID])
    assert exc.value.retry_after == 7


async def test_over_the_rate_limit_is_429_with_an_empty_body_and_integer_retry_after(tmp_path) -> None:
    limited = start_emulator(tmp_path, rate_limit_per_minute="3")
    try:
        async with sdk(limited) as polar:
            for _ in range(3):
                await polar.subscriptions.list()
            with pytest.raises(PolarRateLimitError) as exc:
                await polar.subscriptions.list()
        assert 1 <= exc.value.retry_after <= 60
        raw = httpx.get(f"{limited.url}/v1/subscriptions/", headers={"Authorization": f"Bearer {TOKEN}"})
        assert raw.status_code == 429 and raw.content == b"" and raw.headers["retry-after"].isdigit()
    finally:
        limited.stop()


async def test_auth_version_and_body_rules_answer_like_polar(emulator) -> None:
    async with sdk(emulator, token="polar_oat_wrong") as polar:
        with pytest.raises(PolarClientError) as exc:
            await polar.subscriptions.list()
    assert exc.value.status_code == 401
    h = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.get(f"{emulator.url}/v1/subscriptions/", headers={**h, "Polar-Version": "2031-01"})
    assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})
    r = httpx.get(f"{emulator.url}/v1/subscriptions/", headers={**h, "Polar-Version": "2026-10"})
    assert r.headers["polar-version"] == "2026-10"

    def chunked():
        yield b'{"events": []}'

    assert httpx.post(f"{emulator.url}/v1/events/ingest", content=chunked(), headers=h).status_code == 411
    big = b'{"events": [' + b" " * (10 * 1024 * 1024) + b"]}"
    assert httpx.post(f"{emulator.url}/v1/events/ingest", content=big, headers=h).status_code == 413


async def test_checkout_session_and_customer_reads_through_the_sdk(emulator) -> None:
    user = f"usr_{uuid.uuid4().hex[:8]}"
    async with sdk(emulator) as polar:
        checkout = await polar.checkouts.create(
            products=[PRO_PRODUCT_ID], external_customer_id=user, metadata={"plan": "pro"},
            success_url="http://127.0.0.1:8000/subscription/success?checkout_id={CHECKOUT_ID}")
        assert checkout.status == "open" and checkout.url.startswith(emulator.url)
        assert checkout.external_customer_id == user and checkout.client_secret.startswith("polar_c_")
        expires = datetime.fromisoformat(checkout.expires_at)
        assert timedelta(hours=23, minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=24)
        with pytest.raises(polar_errors.HTTPValidationError) as exc:
            await polar.customer_sessions.create(external_customer_id=user)
        assert exc.value.error.detail[0].msg == "Customer does not exist."
        with pytest.raises(polar_errors.ResourceNotFound):
            await polar.customers.get_external(user)
        with pytest.raises(polar_errors.HTTPValidationError):
            await polar.checkouts.create(products=["no-such-product"])

        admin(emulator, "POST", f"checkouts/{checkout.id}/complete")
        customer = await polar.customers.get_external(user)
        assert customer.external_id == user
        session = await polar.customer_sessions.create(external_customer_id=user, return_url="http://x/back")
        assert session.token.startswith("polar_cst_") and "customer_session_token=" in session.customer_portal_url
        page = await polar.subscriptions.list(external_customer_id=user, active=True)
        assert [s.product_id for s in page.items] == [PRO_PRODUCT_ID] and page.pagination.total_count == 1
        await polar.events.ingest(events=[usage(f"q-{uuid.uuid4()}", user=user, tokens=1234)])
        q = await polar.meters.quantities(TOKENS_METER_ID, start_timestamp="2020-01-01T00:00:00Z",
                                          end_timestamp="2100-01-01T00:00:00Z", interval="month",
                                          external_customer_id=user)
        assert q.total == 1234
        meters = await polar.customer_meters.list(external_customer_id=user)
        [meter] = meters.items
        assert (meter.meter_id, meter.consumed_units, meter.credited_units) == (TOKENS_METER_ID, 1234, 1_000_000)
        assert meter.balance == 1_000_000 - 1234 and meter.customer.external_id == user
    state = httpx.get(f"{emulator.url}/v1/customers/external/{user}/state",
                      headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert [s["status"] for s in state["active_subscriptions"]] == ["active"]
    assert state["active_meters"][0]["credited_units"] == 1_000_000
    assert state["active_meters"][0]["balance"] == 1_000_000 - 1234


PURCHASE = ["customer.created", "subscription.created", "subscription.active", "order.created", "order.paid",
            "benefit_grant.created"]


@pytest.mark.parametrize("scheme", ["standard", "legacy"])
async def test_webhooks_are_signed_as_polar_signs_and_verify_with_both_libraries(emulator, scheme) -> None:
    user = f"usr_{uuid.uuid4().hex[:8]}"
    with webhook_receiver() as rx:
        admin(emulator, "POST", "delivery", json={"url": rx.url, "scheme": scheme, "max_copies": 1,
                                                  "shuffle": False, "concurrent": False})
        sent = admin(emulator, "POST", "simulate/purchase", json={"external_customer_id": user,
                                                                  "product_id": PRO_PRODUCT_ID}).json()["webhooks"]
        admin(emulator, "GET", "webhooks", params={"wait": 10})
    assert [w["type"] for w in sent] == PURCHASE
    assert [r.json["type"] for r in rx.received] == PURCHASE
    key = Webhook(SECRET) if scheme == "standard" else Webhook(SECRET.encode())
    for r in rx.received:
        assert r.headers["webhook-signature"].startswith("v1,")
        key.verify(r.body, r.headers)
        parsed = validate_event(r.body, r.headers, SECRET)  # the SDK's verifier tries both schemes
        assert parsed.type == r.json["type"]
    sub = rx.received[2].json["data"]
    assert sub["customer"]["external_id"] == user and sub["product_id"] == PRO_PRODUCT_ID


async def test_failed_deliveries_are_retried_with_the_same_id_and_a_fresh_timestamp(emulator) -> None:
    user = f"usr_{uuid.uuid4().hex[:8]}"
    with webhook_receiver() as rx:
        rx.fail_first = 2
        admin(emulator, "POST", "delivery", json={"url": rx.url, "scheme": "standard", "max_copies": 1,
                                                  "shuffle": False, "concurrent": False})
        admin(emulator, "POST", "simulate/purchase", json={"external_customer_id": user, "product_id": TEAM_PRODUCT_ID})
        log = admin(emulator, "GET", "webhooks", params={"wait": 10}).json()["webhooks"]
    first = rx.received[:3]
    assert len({r.headers["webhook-id"] for r in first}) == 1 and len({r.body for r in first}) == 1
    mine = next(w for w in log if w["id"] == first[0].headers["webhook-id"])
    assert [a["status"] for a in mine["attempts"]] == [500, 500, 202] and mine["succeeded"] is True
    assert "benefit_grant.created" not in [r.json["type"] for r in rx.received]  # Team has no included credits


async def test_duplicate_shuffled_concurrent_mode_sends_every_event_one_to_five_times(emulator) -> None:
    user = f"usr_{uuid.uuid4().hex[:8]}"
    with webhook_receiver() as rx:
        admin(emulator, "POST", "delivery", json={"url": rx.url, "max_copies": 5, "shuffle": True, "concurrent": True})
        admin(emulator, "POST", "simulate/purchase", json={"external_customer_id": user, "product_id": PRO_PRODUCT_ID})
        for action in ("cancel", "uncancel", "renew", "past_due", "revoke"):
            assert admin(emulator, "POST", f"simulate/{action}", json={"external_customer_id": user}).status_code == 200
        admin(emulator, "GET", "webhooks", params={"wait": 10})
        admin(emulator, "POST", "delivery", json={"max_copies": 1, "shuffle": False, "concurrent": False})
    by_id: dict[str, int] = {}
    for r in rx.received:
        by_id[r.headers["webhook-id"]] = by_id.get(r.headers["webhook-id"], 0) + 1
    assert all(1 <= n <= 5 for n in by_id.values())
    assert max(by_id.values()) > 1 and len(rx.received) > len(by_id)
    assert time.time()  # (the receiver saw them all before the context closed)
