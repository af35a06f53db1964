"""The chat API over HTTPS (ingress /v1/*), for runtimes without a NATS connection: the same contracts and answers as
billing.rpc.*, against the whole backend as processes."""
from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio
from polar_billing_client.client import BillingClient

from shared.db import connect
from shared.db.migrate import migrate
from tests.conftest import Servers, drop_database, new_database
from tests.e2e.client_stack import ClientStack, start_client_stack
from tests.e2e.procs import ROOT
from tests.e2e.stack import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ClientStack]:
    db_url = await new_database(servers)
    await migrate(db_url)
    s = await start_client_stack(servers.nats_url, db_url, tmp_path_factory.mktemp("http-stack"))
    yield s
    s.stop()
    for log in Path(s.log_dir).rglob("*.log"):
        assert s.api_key not in log.read_text(), f"the API key is in {log}"
    await drop_database(servers, db_url)


@pytest_asyncio.fixture(loop_scope="module")
async def http(stack: ClientStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.ingress_url, timeout=15,
                                 headers={"authorization": f"Bearer {stack.api_key}"}) as client:
        yield client


def event(user_id: str, event_id: str | None = None, **changes: object) -> dict:
    return {"event_id": event_id or f"ev_{uuid.uuid4().hex}", "user_id": user_id, "thread_id": "t1",
            "model": "gpt-3.5-turbo", "input_tokens": 10, "output_tokens": 5,
            "occurred_at": datetime.now(UTC).isoformat(), **changes}


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key-wrong-key-wrong", "Basic abc", "Bearer"])
async def test_a_request_without_a_valid_key_is_401_and_does_nothing(stack: ClientStack, authorization) -> None:
    headers = {"authorization": authorization} if authorization else {}
    async with httpx.AsyncClient(base_url=stack.ingress_url, headers=headers) as anon:
        r = await anon.post("/v1/check", json={"user_id": "usr_x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


async def test_usage_is_stored_once_per_event_id_single_or_batched(http: httpx.AsyncClient, stack: ClientStack) -> None:
    user = f"usr_http_{uuid.uuid4().hex[:8]}"
    one = event(user)
    assert (await http.post("/v1/usage", json=one)).json() == {"stored": 1, "duplicates": 0}
    assert (await http.post("/v1/usage", json=one)).json() == {"stored": 0, "duplicates": 1}
    batch = [event(user) for _ in range(499)] + [one]
    r = await http.post("/v1/usage", json={"events": batch})
    assert r.status_code == 200 and r.json() == {"stored": 499, "duplicates": 1}
    db = await connect(stack.database_url)
    try:
        async def all_in_ledger() -> bool:
            return await db.fetchval("SELECT count(*) FROM usage_events WHERE user_id = $1", user) == 500

        assert await eventually(all_in_ledger, timeout=30)
    finally:
        await db.close()


async def test_a_bad_event_in_a_batch_names_its_field_and_nothing_is_stored(http: httpx.AsyncClient,
                                                                           stack: ClientStack) -> None:
    user = f"usr_http_{uuid.uuid4().hex[:8]}"
    batch = [event(user) for _ in range(5)]
    batch[3]["input_tokens"] = -1
    r = await http.post("/v1/usage", json={"events": batch})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_request" and r.json()["error"]["field"] == "events.3.input_tokens"
    too_many = await http.post("/v1/usage", json={"events": [event(user) for _ in range(501)]})
    assert too_many.status_code == 400 and too_many.json()["error"]["field"] == "events"
    not_json = await http.post("/v1/usage", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["error"]["message"] == "the body is not JSON"
    huge = await http.post("/v1/usage", content=b"x" * (1024 * 1024 + 1))
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"
    fine = await http.post("/v1/usage", json=event(user))  # the marker: once it is in, so would the refused be
    assert fine.status_code == 200
    db = await connect(stack.database_url)
    try:
        async def marker_in() -> bool:
            return await db.fetchval("SELECT count(*) FROM usage_events WHERE user_id = $1", user) >= 1

        assert await eventually(marker_in, timeout=30)
        assert await db.fetchval("SELECT count(*) FROM usage_events WHERE user_id = $1", user) == 1
    finally:
        await db.close()


async def test_check_reserve_release_and_status_answer_as_over_nats(http: httpx.AsyncClient,
                                                                     stack: ClientStack) -> None:
    user = "org.42/user 7 é"
    nats_client = await BillingClient.connect(stack.nats_url)
    try:
        over_nats = await nats_client.check(user, model="gpt-4o", thread_id="t1")
        r = await http.post("/v1/check", json={"user_id": user, "model": "gpt-4o", "thread_id": "t1"})
        assert r.status_code == 200 and r.json() == json.loads(over_nats.model_dump_json())
        assert r.json()["reason"] == "model_not_in_plan"
        hold = (await http.post("/v1/reserve", json={"user_id": user, "estimated_tokens": 100})).json()
        assert hold["allowed"] and hold["reservation_id"].startswith("rsv_")
        status = (await http.get(f"/v1/status/{quote(user, safe='')}")).json()
        assert status["plan"] == "free" and status["limits"]["tokens_per_month"]["used"] == 100
        assert (await http.post("/v1/release", json={"reservation_id": hold["reservation_id"]})).json() == {
            "released": True}
        assert (await http.post("/v1/release", json={"reservation_id": hold["reservation_id"]})).json() == {
            "released": False}
        assert (await nats_client.status(user)).limits["tokens_per_month"].used == 0
    finally:
        await nats_client.close()


async def test_links_and_their_errors(http: httpx.AsyncClient) -> None:
    user = f"usr_http_{uuid.uuid4().hex[:8]}"
    link = await http.post("/v1/checkout", json={"user_id": user, "plan": "pro"})
    assert link.status_code == 200 and link.json()["checkout_id"] and link.json()["url"].startswith("http")
    bad = await http.post("/v1/checkout", json={"user_id": user, "plan": "enterprise"})
    assert bad.status_code == 400 and bad.json()["error"] == {
        "code": "unknown_plan", "message": "plan must be pro or team, not 'enterprise'", "field": "plan"}
    nobody = await http.post("/v1/portal", json={"user_id": user})
    assert nobody.status_code == 404 and nobody.json()["error"]["code"] == "no_customer"
    missing = await http.post("/v1/check", json={})
    assert missing.status_code == 400 and missing.json()["error"]["field"] == "user_id"


async def test_billing_away_is_503_with_retry_after(http: httpx.AsyncClient, stack: ClientStack) -> None:
    stack.stop_billing()
    try:
        r = await http.post("/v1/check", json={"user_id": "usr_x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable" and r.headers["retry-after"] == "1"
    finally:
        stack.start_billing()
    assert (await http.post("/v1/check", json={"user_id": "usr_x"})).status_code == 200


async def test_the_served_openapi_document_is_the_committed_one(http: httpx.AsyncClient) -> None:
    served = (await http.get("/v1/openapi.json")).json()
    assert served == json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert set(served["paths"]) == {"/v1/usage", "/v1/check", "/v1/reserve", "/v1/release", "/v1/status/{user_id}",
                                    "/v1/usage/{user_id}", "/v1/checkout", "/v1/portal"}


async def test_the_usage_report_over_http_equals_the_one_over_nats(http: httpx.AsyncClient, stack: ClientStack) -> None:
    user = "org.42/user 7 é"
    nats_client = await BillingClient.connect(stack.nats_url)
    try:
        over_nats = await nats_client.usage(user, group_by=["day", "model"], limit=3)
    finally:
        await nats_client.close()
    r = await http.get(f"/v1/usage/{quote(user, safe='')}", params={"group_by": "day,model", "limit": "3"})
    assert r.status_code == 200 and r.json() == json.loads(over_nats.model_dump_json())
    bad = await http.get(f"/v1/usage/{quote(user, safe='')}", params={"from": "2026-03-01", "to": "2026-02-01"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "from"
    week = await http.get(f"/v1/usage/{quote(user, safe='')}", params={"group_by": "week"})
    assert week.status_code == 400 and week.json()["error"]["field"] == "group_by.0"
