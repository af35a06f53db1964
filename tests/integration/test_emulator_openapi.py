"""Every answer the emulator gives validates against the schema of its operation in Polar's OpenAPI document
(polar_emulator/openapi/2026-10.openapi.json, a copy of shared/polar's: the emulator's source of truth)."""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from polar_emulator.config import PRO_PRODUCT_ID, TOKENS_METER_ID
from tests.e2e.procs import ServiceProcess
from tests.support.emulator import TOKEN, admin, start_emulator

SPEC_PATH = Path(__file__).resolve().parents[2] / "polar_emulator" / "openapi" / "2026-10.openapi.json"
SPEC = json.loads(SPEC_PATH.read_text())
REGISTRY = Registry().with_resource("urn:polar", Resource.from_contents(SPEC, default_specification=DRAFT202012))
H = {"Authorization": f"Bearer {TOKEN}", "Polar-Version": "2026-10"}


def validate(path: str, method: str, resp: httpx.Response) -> None:
    status = str(resp.status_code)
    assert status in SPEC["paths"][path][method]["responses"], f"{method} {path} answered {status}, not in the spec"
    pointer = "/".join(p.replace("~", "~0").replace("/", "~1")
                       for p in ("paths", path, method, "responses", status, "content", "application/json", "schema"))
    validator = Draft202012Validator({"$ref": f"urn:polar#/{pointer}"}, registry=REGISTRY)
    errors = sorted(validator.iter_errors(resp.json()), key=lambda e: list(e.path))
    assert not errors, f"{method} {path} {status}: " + "; ".join(
        f"{'/'.join(map(str, e.path))}: {e.message[:200]}" for e in errors[:5])


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = start_emulator(tmp_path_factory.mktemp("emulator-openapi"))
    yield svc
    svc.stop_or_kill()


def test_every_operation_answers_in_its_documented_shape(emulator) -> None:
    u = f"usr_{uuid.uuid4().hex[:8]}"
    base = emulator.url
    ts = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    with httpx.Client(base_url=base, headers=H, timeout=10) as c:
        calls = [
            ("/v1/events/ingest", "post", c.post("/v1/events/ingest", json={"events": [
                {"name": "ai_usage", "external_customer_id": u, "external_id": f"e-{u}", "timestamp": ts,
                 "metadata": {"total_tokens": 10}}]})),
            ("/v1/events/ingest", "post", c.post("/v1/events/ingest", json={"events": [{"name": "x" * 200}]})),
            ("/v1/checkouts/", "post", c.post("/v1/checkouts/", json={"products": [PRO_PRODUCT_ID],
                                                                      "external_customer_id": u})),
            ("/v1/checkouts/", "post", c.post("/v1/checkouts/", json={"products": []})),
            ("/v1/customer-sessions/", "post", c.post("/v1/customer-sessions/", json={"external_customer_id": u})),
            ("/v1/customers/external/{external_id}", "get", c.get(f"/v1/customers/external/{u}")),
            ("/v1/customers/external/{external_id}/state", "get", c.get(f"/v1/customers/external/{u}/state")),
        ]
        admin(emulator, "POST", "simulate/purchase", json={"external_customer_id": u, "product_id": PRO_PRODUCT_ID})
        calls += [
            ("/v1/customer-sessions/", "post", c.post("/v1/customer-sessions/", json={"external_customer_id": u})),
            ("/v1/customers/external/{external_id}", "get", c.get(f"/v1/customers/external/{u}")),
            ("/v1/customers/external/{external_id}/state", "get", c.get(f"/v1/customers/external/{u}/state")),
            ("/v1/subscriptions/", "get", c.get("/v1/subscriptions/", params={"external_customer_id": u,
                                                                              "active": "true"})),
            ("/v1/subscriptions/", "get", c.get("/v1/subscriptions/", params={"limit": 1000})),
            ("/v1/meters/{id}/quantities", "get", c.get(f"/v1/meters/{TOKENS_METER_ID}/quantities", params={
                "start_timestamp": "2020-01-01T00:00:00Z", "end_timestamp": "2100-01-01T00:00:00Z",
                "interval": "month", "external_customer_id": u})),
            ("/v1/meters/{id}/quantities", "get", c.get(f"/v1/meters/{uuid.uuid4()}/quantities", params={
                "start_timestamp": "2020-01-01T00:00:00Z", "end_timestamp": "2100-01-01T00:00:00Z"})),
            ("/v1/customer-meters/", "get", c.get("/v1/customer-meters/", params={"external_customer_id": u})),
        ]
    statuses = set()
    for path, method, resp in calls:
        validate(path, method, resp)
        statuses.add((path, resp.status_code))
    assert ("/v1/events/ingest", 422) in statuses and ("/v1/customer-sessions/", 201) in statuses
    assert ("/v1/customers/external/{external_id}", 404) in statuses and ("/v1/checkouts/", 422) in statuses


def test_every_webhook_the_emulator_sends_validates_against_its_payload_schema(emulator) -> None:
    from tests.support.emulator import webhook_receiver

    u = f"usr_{uuid.uuid4().hex[:8]}"
    with webhook_receiver() as rx:
        admin(emulator, "POST", "delivery", json={"url": rx.url, "max_copies": 1, "shuffle": False,
                                                  "concurrent": False})
        admin(emulator, "POST", "simulate/purchase", json={"external_customer_id": u, "product_id": PRO_PRODUCT_ID})
        for action in ("cancel", "uncancel", "renew", "past_due", "refund", "revoke"):
            admin(emulator, "POST", f"simulate/{action}", json={"external_customer_id": u})
        admin(emulator, "GET", "webhooks", params={"wait": 10})
    assert len(rx.received) >= 20
    for r in rx.received:
        payload = r.json
        payload.pop("api_version", None)  # the SDK's envelope key; the 2026-08 spec does not define it
        event_type = payload["type"]
        name = "Webhook" + "".join(p.title().replace("_", "") for p in event_type.replace(".", "_").split("_")) + "Payload"
        validator = Draft202012Validator({"$ref": f"urn:polar#/components/schemas/{name}"}, registry=REGISTRY)
        errors = list(validator.iter_errors(payload))
        assert not errors, f"{event_type}: {errors[0].message[:300]} at {list(errors[0].path)}"


def test_reconciliation_and_webhook_operations_answer_in_their_documented_shape(emulator) -> None:
    from polar_emulator.config import WEBHOOK_ENDPOINT_ID
    from tests.support.emulator import deliver_to, wait_for_webhooks, webhook_receiver

    unknown = "5b1e2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d4e"
    seeded = admin(emulator, "POST", "seed", json={"count": 12, "prefix": f"oa-{uuid.uuid4().hex[:6]}-",
                                                   "mix": {"team": 3, "past_due": 2, "canceled": 2, "trialing": 1},
                                                   "without_external_id": 2}).json()["customers"]
    with webhook_receiver() as rx, httpx.Client(base_url=emulator.url, headers=H, timeout=10) as c:
        rx.fail_first = 1
        deliver_to(emulator, rx)
        admin(emulator, "POST", "simulate/purchase", json={"external_customer_id": f"oa-{uuid.uuid4().hex[:8]}",
                                                           "product_id": PRO_PRODUCT_ID})
        events = wait_for_webhooks(emulator)
        ep = f"/v1/webhooks/endpoints/{WEBHOOK_ENDPOINT_ID}"
        calls = [
            ("/v1/customers/", "get", c.get("/v1/customers/", params={"limit": 5, "sorting": "email"})),
            ("/v1/customers/", "get", c.get("/v1/customers/", params={"query": "nobody-at-all"})),
            ("/v1/customers/", "get", c.get("/v1/customers/", params={"page": 0})),
            ("/v1/customers/{id}", "get", c.get(f"/v1/customers/{seeded[-1]['customer_id']}")),
            ("/v1/customers/{id}", "get", c.get(f"/v1/customers/{unknown}")),
            ("/v1/subscriptions/", "get", c.get("/v1/subscriptions/", params={
                "active": "false", "product_id": PRO_PRODUCT_ID, "sorting": "-current_period_end", "limit": 500})),
            ("/v1/subscriptions/", "get", c.get("/v1/subscriptions/", params={"customer_id": "nope"})),
            ("/v1/subscriptions/{id}", "get", c.get(f"/v1/subscriptions/{seeded[0]['subscription_id']}")),
            ("/v1/subscriptions/{id}", "get", c.get(f"/v1/subscriptions/{unknown}")),
            ("/v1/webhooks/endpoints", "get", c.get("/v1/webhooks/endpoints")),
            ("/v1/webhooks/endpoints", "get", c.get("/v1/webhooks/endpoints", params={"limit": -1})),
            ("/v1/webhooks/endpoints/{id}", "get", c.get(ep)),
            ("/v1/webhooks/endpoints/{id}", "get", c.get(f"/v1/webhooks/endpoints/{unknown}")),
            ("/v1/webhooks/endpoints/{id}", "get", c.get("/v1/webhooks/endpoints/not-a-uuid")),
            ("/v1/webhooks/endpoints/{id}", "patch", c.patch(ep, json={"name": "billing", "enabled": True})),
            ("/v1/webhooks/endpoints/{id}", "patch", c.patch(ep, json={"enabled": "maybe"})),
            ("/v1/webhooks/endpoints/{id}", "patch", c.patch(f"/v1/webhooks/endpoints/{unknown}", json={})),
            ("/v1/webhooks/deliveries", "get", c.get("/v1/webhooks/deliveries", params={
                "endpoint_id": WEBHOOK_ENDPOINT_ID, "succeeded": "false"})),
            ("/v1/webhooks/deliveries", "get", c.get("/v1/webhooks/deliveries", params={"limit": 200})),
            ("/v1/webhooks/deliveries", "get", c.get("/v1/webhooks/deliveries", params={"succeeded": "perhaps"})),
            ("/v1/webhooks/events/{id}/redeliver", "post", c.post(f"/v1/webhooks/events/{events[0]['id']}/redeliver")),
            ("/v1/webhooks/events/{id}/redeliver", "post", c.post(f"/v1/webhooks/events/{unknown}/redeliver")),
        ]
        wait_for_webhooks(emulator)
    statuses = set()
    for path, method, resp in calls:
        validate(path, method, resp)
        statuses.add((path, method, resp.status_code))
    assert {("/v1/webhooks/endpoints/{id}", "get", s) for s in (200, 404, 422)} <= statuses
    assert {("/v1/webhooks/endpoints/{id}", "patch", s) for s in (200, 404, 422)} <= statuses
    assert {("/v1/webhooks/events/{id}/redeliver", "post", s) for s in (202, 404)} <= statuses
    assert {("/v1/webhooks/deliveries", "get", s) for s in (200, 422)} <= statuses
    assert calls[0][2].json()["pagination"]["total_count"] >= 14 and len(calls[0][2].json()["items"]) == 5
    assert calls[1][2].json()["pagination"] == {"total_count": 0, "max_page": 0}
    every = calls[18][2].json()  # 200 asked, 100 served; this test's 7 attempts among the other test's
    assert len(every["items"]) == min(100, every["pagination"]["total_count"]) and len(every["items"]) >= 7
    assert [d["http_code"] for d in calls[17][2].json()["items"]] == [500]
