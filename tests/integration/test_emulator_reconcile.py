"""What reconciliation, backfill and a self-healing webhook endpoint need from Polar, through polar-sdk against the
emulator: paged and filtered lists (Polar's traps included), silent drift, the webhook endpoint, its deliveries,
auto-disable, redelivery, token scopes and the fixed-window rate limit."""
from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from polar import PolarClientError
from polar.base import PolarRateLimitError
from polar.v2026_10 import errors as polar_errors
from polar.v2026_10.webhooks import validate_event
from standardwebhooks import Webhook

from polar_emulator.config import PRO_PRODUCT_ID, TEAM_PRODUCT_ID, WEBHOOK_ENDPOINT_ID
from tests.e2e.procs import ServiceProcess
from tests.support.emulator import (
    TOKEN,
    Receiver,
    admin,
    deliver_to,
    polar,
    start_emulator,
    wait_for_webhooks,
    webhook_receiver,
)

SECRET = "whsec_" + "cmVjb25jaWxlLXRlc3Qtc2VjcmV0LTMyLWJ5dGVzISE="
H = {"Authorization": f"Bearer {TOKEN}"}
MIX = {"team": 40, "trialing": 6, "canceling": 4, "past_due": 9, "canceled": 12, "unpaid": 3, "incomplete": 2}
PURCHASE_PRO = 6  # customer.created, subscription.created/.active, order.created/.paid, benefit_grant.created


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = start_emulator(tmp_path_factory.mktemp("emulator-reconcile"), webhook_secret=SECRET)
    yield svc
    svc.stop_or_kill()


@pytest.fixture(autouse=True)
def fresh(emulator: ServiceProcess) -> Iterator[None]:
    """Each test starts with an empty organization, an enabled endpoint without a URL, and Polar's defaults."""
    admin(emulator, "POST", "reset")
    admin(emulator, "DELETE", "faults")
    admin(emulator, "POST", "delivery", json={"url": None, "scheme": "standard", "backoff_base": 0.05,
                                              "max_copies": 1, "shuffle": False, "concurrent": False})
    admin(emulator, "POST", "webhook-endpoint", json={"enabled": True, "reject_local_urls": False,
                                                      "disable_after": 10})
    admin(emulator, "POST", "token-scopes", json={"scopes": None})
    yield
    wait_for_webhooks(emulator, 10)  # nothing in flight into the next test


def seed(emulator: ServiceProcess, count: int, mix: dict | None = None, anonymous: int = 0,
         prefix: str = "seed-") -> list[dict]:
    r = admin(emulator, "POST", "seed", json={"count": count, "prefix": prefix, "mix": mix or {},
                                              "without_external_id": anonymous})
    assert r.status_code == 201, r.text
    return r.json()["customers"]


def purchase(emulator: ServiceProcess, user: str, product: str = PRO_PRODUCT_ID) -> None:
    r = admin(emulator, "POST", "simulate/purchase", json={"external_customer_id": user, "product_id": product})
    assert r.status_code == 200, r.text


def simulate(emulator: ServiceProcess, action: str, user: str) -> None:
    assert admin(emulator, "POST", f"simulate/{action}", json={"external_customer_id": user}).status_code == 200


# --- lists ------------------------------------------------------------------------------------------------------
async def test_customers_page_through_more_than_100_with_the_sdk(emulator) -> None:
    seeded = seed(emulator, 230, anonymous=4)
    async with polar(emulator) as sdk:
        pages = [await sdk.customers.list(page=p, limit=100) for p in (1, 2, 3)]
        every = [c async for c in sdk.customers.iter_list(limit=100)]
        by_query = await sdk.customers.list(query="seed-00017")
        by_email = await sdk.customers.list(email="seed-00042@example.com")
        by_email_order = await sdk.customers.list(sorting=["email"], limit=3)
    assert [len(p.items) for p in pages] == [100, 100, 34]
    assert {(p.pagination.total_count, p.pagination.max_page) for p in pages} == {(234, 3)}
    ids = [c.id for p in pages for c in p.items]
    assert len(set(ids)) == 234 and set(ids) == {c["customer_id"] for c in seeded}
    assert [c.id for c in every] == ids
    created = [c.created_at for c in every]
    assert created == sorted(created, reverse=True)  # Polar's default: -created_at
    assert sum(c.external_id is None for c in every) == 4  # customers without an external id are listed too
    assert [c.external_id for c in by_query.items] == ["seed-00017"]
    assert [c.external_id for c in by_email.items] == ["seed-00042"]
    assert [c.email for c in by_email_order.items] == sorted(c.email for c in every)[:3]


async def test_subscriptions_page_across_more_than_100_in_started_at_order(emulator) -> None:
    seeded = seed(emulator, 230, MIX)
    async with polar(emulator) as sdk:
        ascending = [await sdk.subscriptions.list(page=p, limit=100, sorting=["started_at"]) for p in (1, 2, 3)]
        default = [s async for s in sdk.subscriptions.iter_list(limit=100)]
    items = [s for p in ascending for s in p.items]
    assert [len(p.items) for p in ascending] == [100, 100, 30]
    assert ascending[0].pagination.total_count == 230 and ascending[0].pagination.max_page == 3
    assert len({s.id for s in items}) == 230 == len({s["subscription_id"] for s in seeded})
    started = [s.started_at for s in items if s.started_at is not None]
    assert started == sorted(started)
    assert {s.status for s in items[-2:]} == {"incomplete"} and items[-1].started_at is None  # NULLs last ascending
    assert {s.status for s in default[:2]} == {"incomplete"}  # default -started_at: NULLs first
    assert [s.id for s in default if s.started_at] == [s.id for s in reversed(items) if s.started_at]


async def test_a_limit_above_100_is_served_as_100_not_refused(emulator) -> None:
    seed(emulator, 150)
    r = httpx.get(f"{emulator.url}/v1/subscriptions/", params={"limit": 1000}, headers=H)
    assert r.status_code == 200
    assert len(r.json()["items"]) == 100 and r.json()["pagination"] == {"total_count": 150, "max_page": 2}
    async with polar(emulator) as sdk:
        big = await sdk.customers.list(limit=250)
        with pytest.raises(polar_errors.HTTPValidationError) as exc:
            await sdk.subscriptions.list(limit=0)
    assert len(big.items) == 100 and big.pagination.max_page == 2
    assert exc.value.error.detail[0].loc == ["query", "limit"]
    assert httpx.get(f"{emulator.url}/v1/customers/", params={"page": 0}, headers=H).status_code == 422


async def test_an_empty_list_has_max_page_0(emulator) -> None:
    seed(emulator, 3)
    async with polar(emulator) as sdk:
        subs = await sdk.subscriptions.list(external_customer_id="nobody")
        customers = await sdk.customers.list(query="nobody")
        endpoints = await sdk.webhooks.list_webhook_endpoints()  # no webhook URL: no endpoint
        deliveries = await sdk.webhooks.list_webhook_deliveries()
        walked = [s async for s in sdk.subscriptions.iter_list(external_customer_id="nobody")]
    for page in (subs, customers, endpoints, deliveries):
        assert page.items == [] and (page.pagination.total_count, page.pagination.max_page) == (0, 0)
    assert walked == []


async def test_active_means_active_or_trialing_and_inactive_means_canceled_or_unpaid(emulator) -> None:
    seed(emulator, 120, MIX, anonymous=2)
    async with polar(emulator) as sdk:
        active = [s async for s in sdk.subscriptions.iter_list(active=True, limit=100)]
        inactive = [s async for s in sdk.subscriptions.iter_list(active=False, limit=100)]
        every = [s async for s in sdk.subscriptions.iter_list(limit=100)]
    pro = 120 - sum(MIX.values())
    assert Counter(s.status for s in active) == {"active": pro + 2 + MIX["team"] + MIX["canceling"],
                                                 "trialing": MIX["trialing"]}
    assert Counter(s.status for s in inactive) == {"canceled": MIX["canceled"], "unpaid": MIX["unpaid"]}
    neither = {s.id for s in every} - {s.id for s in active} - {s.id for s in inactive}
    assert Counter(s.status for s in every if s.id in neither) == {"past_due": MIX["past_due"],
                                                                   "incomplete": MIX["incomplete"]}
    # a pending cancellation is still active: the status stays active until the period ends
    assert sum(s.cancel_at_period_end for s in active) == MIX["canceling"]


async def test_subscriptions_filter_by_customer_external_id_product_and_status(emulator) -> None:
    seeded = seed(emulator, 60, {"team": 10, "past_due": 5}, anonymous=1)
    two = [c["customer_id"] for c in seeded[:2]]
    async with polar(emulator) as sdk:
        by_customer = await sdk.subscriptions.list(customer_id=two)
        by_external = await sdk.subscriptions.list(external_customer_id=["seed-00003", "seed-00004", "nobody"])
        team = await sdk.subscriptions.list(product_id=TEAM_PRODUCT_ID, limit=100)
        team_active = await sdk.subscriptions.list(product_id=TEAM_PRODUCT_ID, active=True, limit=100)
        past_due = await sdk.subscriptions.list(status="past_due", limit=100)
        with pytest.raises(polar_errors.HTTPValidationError):
            await sdk.subscriptions.list(customer_id="not-a-uuid")
    assert {s.customer_id for s in by_customer.items} == set(two) and by_customer.pagination.total_count == 2
    assert sorted(s.customer.external_id for s in by_external.items) == ["seed-00003", "seed-00004"]
    assert team.pagination.total_count == 10 == team_active.pagination.total_count
    assert {s.product_id for s in team.items} == {TEAM_PRODUCT_ID}
    assert past_due.pagination.total_count == 5
    anonymous = [c for c in seeded if c["external_id"] is None]
    async with polar(emulator) as sdk:
        [sub] = (await sdk.subscriptions.list(customer_id=anonymous[0]["customer_id"])).items
    assert sub.customer.external_id is None and sub.status == "active"


# --- silent drift -----------------------------------------------------------------------------------------------
async def test_a_silent_change_is_visible_in_lists_but_sends_no_webhook(emulator) -> None:
    with webhook_receiver() as rx:
        deliver_to(emulator, rx)
        purchase(emulator, "drift-1")
        wait_for_webhooks(emulator)
        sent = len(rx.received)
        async with polar(emulator) as sdk:
            [before] = (await sdk.subscriptions.list(external_customer_id="drift-1")).items
            seen = [before]
            for change, check in [
                ({"status": "past_due"}, lambda s: s.status == "past_due" and s.past_due_at is not None),
                ({"product_id": TEAM_PRODUCT_ID}, lambda s: s.product_id == TEAM_PRODUCT_ID and s.amount == 5000),
                ({"cancel_at_period_end": True},
                 lambda s: s.cancel_at_period_end and s.ends_at == s.current_period_end),
                ({"current_period_end": "2030-01-31T00:00:00Z"},
                 lambda s: s.current_period_end.startswith("2030-01-31")),
                ({"revoke": True}, lambda s: s.status == "canceled" and s.ended_at is not None),
            ]:
                r = admin(emulator, "PATCH", f"subscriptions/{before.id}", json=change)
                assert r.status_code == 200, r.text
                after = await sdk.subscriptions.get(before.id)
                assert check(after), (change, after)
                assert after.modified_at > seen[-1].modified_at  # as Polar bumps it on every change
                seen.append(after)
            inactive = await sdk.subscriptions.list(active=False)
            meters = await sdk.customer_meters.list(external_customer_id="drift-1")
        wait_for_webhooks(emulator)
        assert len(rx.received) == sent  # no webhook for any of it
    assert [s.id for s in inactive.items] == [before.id]
    assert meters.items[0].credited_units == 0  # the plan change and the revocation took the Pro credits away
    assert admin(emulator, "PATCH", "subscriptions/nobody", json={"status": "active"}).status_code == 404
    assert admin(emulator, "PATCH", f"subscriptions/{before.id}", json={"status": "gone"}).status_code == 400
    assert admin(emulator, "POST", "seed", json={"count": 1, "prefix": "drift-"}).status_code == 201
    assert admin(emulator, "POST", "seed", json={"count": 1, "prefix": "drift-"}).status_code == 409


# --- the webhook endpoint ---------------------------------------------------------------------------------------
async def test_the_webhook_endpoint_reads_and_updates_through_the_sdk(emulator) -> None:
    with webhook_receiver() as first, webhook_receiver() as second:
        deliver_to(emulator, first)
        async with polar(emulator) as sdk:
            listed = await sdk.webhooks.list_webhook_endpoints()
            got = await sdk.webhooks.get_webhook_endpoint(WEBHOOK_ENDPOINT_ID)
            updated = await sdk.webhooks.update_webhook_endpoint(WEBHOOK_ENDPOINT_ID, url=second.url, name="billing")
            purchase(emulator, "ep-1")
            wait_for_webhooks(emulator)
            with pytest.raises(polar_errors.ResourceNotFound):
                await sdk.webhooks.get_webhook_endpoint("5b1e2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d4e")
            with pytest.raises(polar_errors.ResourceNotFound):
                await sdk.webhooks.update_webhook_endpoint("5b1e2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d4e", enabled=True)
            with pytest.raises(polar_errors.HTTPValidationError) as bad_id:
                await sdk.webhooks.get_webhook_endpoint("not-a-uuid")
            with pytest.raises(polar_errors.HTTPValidationError) as bad_flag:
                await sdk.webhooks.update_webhook_endpoint(WEBHOOK_ENDPOINT_ID, enabled="maybe")
            with pytest.raises(polar_errors.HTTPValidationError) as bad_url:
                await sdk.webhooks.update_webhook_endpoint(WEBHOOK_ENDPOINT_ID, url="not a url")
            with pytest.raises(polar_errors.HTTPValidationError) as bad_event:
                await sdk.webhooks.update_webhook_endpoint(WEBHOOK_ENDPOINT_ID, events=["subscription.exploded"])
    [ep] = listed.items
    assert (ep.id, ep.url, ep.format, ep.enabled, ep.api_version) == (WEBHOOK_ENDPOINT_ID, first.url, "raw", True,
                                                                     "2026-10")
    assert ep.secret == SECRET and ep.uses_standard_webhook_signature and "subscription.updated" in ep.events
    assert got == ep and listed.pagination.total_count == 1
    assert (updated.url, updated.name) == (second.url, "billing") and updated.modified_at is not None
    assert first.received == [] and len(second.received) == PURCHASE_PRO  # the new URL gets the events
    assert bad_id.value.error.detail[0].loc == ["path", "id"]
    assert bad_flag.value.error.detail[0].loc == ["body", "enabled"]
    assert bad_url.value.error.detail[0].loc == ["body", "url"]
    assert bad_event.value.error.detail[0].loc[:2] == ["body", "events"]


async def test_unsubscribed_event_types_make_no_event(emulator) -> None:
    with webhook_receiver() as rx:
        deliver_to(emulator, rx)
        async with polar(emulator) as sdk:
            await sdk.webhooks.update_webhook_endpoint(WEBHOOK_ENDPOINT_ID, events=["subscription.active"])
        purchase(emulator, "types-1")
        wait_for_webhooks(emulator)
    assert [r.json["type"] for r in rx.received] == ["subscription.active"]


async def test_enabling_an_endpoint_with_a_localhost_url_is_refused_when_polars_rule_is_on(emulator) -> None:
    with webhook_receiver() as rx:
        deliver_to(emulator, rx)
        admin(emulator, "POST", "webhook-endpoint", json={"enabled": False, "reject_local_urls": True})
        async with polar(emulator) as sdk:
            with pytest.raises(polar_errors.HTTPValidationError) as enabling:
                await sdk.webhooks.update_webhook_endpoint(WEBHOOK_ENDPOINT_ID, enabled=True)
            with pytest.raises(polar_errors.HTTPValidationError) as local:
                await sdk.webhooks.update_webhook_endpoint(WEBHOOK_ENDPOINT_ID, url="https://localhost/hook")
            with pytest.raises(polar_errors.HTTPValidationError) as plain_http:
                await sdk.webhooks.update_webhook_endpoint(WEBHOOK_ENDPOINT_ID, url="http://hooks.example.com/")
            still = await sdk.webhooks.get_webhook_endpoint(WEBHOOK_ENDPOINT_ID)
            admin(emulator, "POST", "webhook-endpoint", json={"reject_local_urls": False})
            enabled = await sdk.webhooks.update_webhook_endpoint(WEBHOOK_ENDPOINT_ID, enabled=True)
    [detail] = enabling.value.error.detail
    assert detail.loc == ["body", "enabled"] and detail.msg.startswith("Cannot enable a webhook endpoint with a loc")
    assert local.value.error.detail[0].msg == "Value error, Webhook URLs cannot point to localhost."
    assert plain_http.value.error.detail[0].type == "url_scheme"
    assert still.enabled is False and still.url == rx.url and enabled.enabled is True


# --- failures, auto-disable, redelivery -------------------------------------------------------------------------
async def test_ten_events_that_fail_for_good_disable_the_endpoint_and_skip_the_rest(emulator) -> None:
    admin(emulator, "POST", "delivery", json={"backoff_base": 0.0005})
    with webhook_receiver() as rx:
        rx.failing = True
        deliver_to(emulator, rx)
        purchase(emulator, "down-1")  # 6 events
        wait_for_webhooks(emulator, 60)
        simulate(emulator, "renew", "down-1")  # 5 more: cycled, updated, order.created, order.paid, grant.cycled
        wait_for_webhooks(emulator, 60)
        simulate(emulator, "cancel", "down-1")  # produced while disabled
        log = wait_for_webhooks(emulator, 60)
        async with polar(emulator) as sdk:
            endpoint = await sdk.webhooks.get_webhook_endpoint(WEBHOOK_ENDPOINT_ID)
            failed = [d async for d in sdk.webhooks.iter_list_webhook_deliveries(
                endpoint_id=WEBHOOK_ENDPOINT_ID, succeeded=False, limit=100)]
            ok = await sdk.webhooks.list_webhook_deliveries(succeeded=True)
            server_errors = await sdk.webhooks.list_webhook_deliveries(http_code_class="5xx", limit=1)
    per_id = Counter(r.headers["webhook-id"] for r in rx.received)
    assert len(per_id) == 10 and set(per_id.values()) == {10}  # Polar's 10 attempts each, then the endpoint is off
    assert endpoint.enabled is False
    assert len(failed) == 100 and {(d.succeeded, d.http_code) for d in failed} == {(False, 500)}
    assert {d.webhook_event.id for d in failed} == set(per_id) and all(d.webhook_event.succeeded is False
                                                                     for d in failed)
    assert ok.pagination.total_count == 0 and server_errors.pagination.total_count == 100
    skipped = [w for w in log if w["skipped"]]
    assert [w["type"] for w in skipped] == ["benefit_grant.cycled", "subscription.updated", "subscription.canceled"]
    assert all(w["attempts"] == [] and w["succeeded"] is None for w in skipped)
    assert not {w["id"] for w in skipped} & set(per_id)  # never sent
    state = admin(emulator, "GET", "webhook-endpoint").json()
    assert state["events"] == {"total": 13, "succeeded": 0, "failed": 10, "skipped": 3, "pending": 0}
    assert state["failure_streak"] == 10 and state["deliveries"] == 100 and state["disabled_at"]


async def test_re_enabling_resends_nothing_and_a_redelivery_keeps_the_webhook_id(emulator) -> None:
    admin(emulator, "POST", "delivery", json={"backoff_base": 0.0005})
    admin(emulator, "POST", "webhook-endpoint", json={"disable_after": 2})
    with webhook_receiver() as rx:
        rx.failing = True
        deliver_to(emulator, rx)
        purchase(emulator, "heal-1")  # fails twice for good, then disables: 4 events skipped
        log = wait_for_webhooks(emulator, 60)
        assert [w["succeeded"] for w in log] == [False, False, None, None, None, None]
        assert [w["skipped"] for w in log] == [False, False, True, True, True, True]
        original = {r.headers["webhook-id"]: r.body for r in rx.received}
        rx.failing = False
        async with polar(emulator) as sdk:
            again = await sdk.webhooks.update_webhook_endpoint(WEBHOOK_ENDPOINT_ID, enabled=True)
            wait_for_webhooks(emulator)
            await asyncio.sleep(0.3)
            assert again.enabled is True and len(rx.received) == 20  # nothing resent on re-enable
            failed = await sdk.webhooks.list_webhook_deliveries(succeeded=False, limit=1)
            event_id = failed.items[0].webhook_event.id
            assert await sdk.webhooks.redeliver_webhook_event(event_id) is None  # 202
            await sdk.webhooks.redeliver_webhook_event(log[2]["id"])  # a skipped one can be redelivered too
            wait_for_webhooks(emulator)
            done = await sdk.webhooks.list_webhook_deliveries(succeeded=True)
            simulate(emulator, "cancel", "heal-1")  # new events flow again
            wait_for_webhooks(emulator)
            with pytest.raises(polar_errors.ResourceNotFound):
                await sdk.webhooks.redeliver_webhook_event("5b1e2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d4e")
            with pytest.raises(polar_errors.HTTPValidationError):
                await sdk.webhooks.redeliver_webhook_event("nope")
    by_id = {r.headers["webhook-id"]: r for r in rx.received[20:22]}
    redelivered, unskipped = by_id[event_id], by_id[log[2]["id"]]
    assert redelivered.body == original[event_id]
    Webhook(SECRET).verify(redelivered.body, redelivered.headers)  # signed afresh, same id
    assert validate_event(redelivered.body, redelivered.headers, SECRET).type == json.loads(original[event_id])["type"]
    assert unskipped.json["type"] == log[2]["type"]
    assert {d.webhook_event.id for d in done.items} == {event_id, log[2]["id"]}
    assert all(d.webhook_event.succeeded and not d.webhook_event.skipped for d in done.items)
    assert [r.json["type"] for r in rx.received[22:]] == ["subscription.updated", "subscription.canceled"]


async def test_a_success_resets_the_failure_streak(emulator) -> None:
    admin(emulator, "POST", "delivery", json={"backoff_base": 0.0005})
    admin(emulator, "POST", "webhook-endpoint", json={"disable_after": 3})
    with webhook_receiver() as rx:
        deliver_to(emulator, rx)
        purchase(emulator, "streak-1", TEAM_PRODUCT_ID)
        wait_for_webhooks(emulator)
        for action, failing in [("cancel", True), ("uncancel", False), ("cancel", True)]:
            rx.failing = failing
            simulate(emulator, action, "streak-1")
            wait_for_webhooks(emulator, 60)
        between = admin(emulator, "GET", "webhook-endpoint").json()
        simulate(emulator, "uncancel", "streak-1")  # 2 more failures: the third in a row disables
        wait_for_webhooks(emulator, 60)
        after = admin(emulator, "GET", "webhook-endpoint").json()
    assert between["endpoint"]["enabled"] is True and between["failure_streak"] == 2
    assert after["endpoint"]["enabled"] is False and after["failure_streak"] == 3
    assert after["events"]["skipped"] == 1


# --- scopes -----------------------------------------------------------------------------------------------------
async def test_a_token_without_webhook_scopes_gets_polars_403(tmp_path) -> None:
    scoped = start_emulator(tmp_path, token_scopes="subscriptions:read events:write",
                            webhook_url="http://127.0.0.1:9/unused")
    try:
        async with polar(scoped) as sdk:
            await sdk.subscriptions.list()  # a scope it has
            for call in (sdk.webhooks.list_webhook_endpoints(), sdk.webhooks.list_webhook_deliveries(),
                         sdk.webhooks.update_webhook_endpoint(WEBHOOK_ENDPOINT_ID, enabled=True)):
                with pytest.raises(PolarClientError) as exc:
                    await call
                assert exc.value.status_code == 403
            raw = httpx.get(f"{scoped.url}/v1/webhooks/endpoints", headers=H)
            assert raw.json() == {"error": "insufficient_scope", "error_description":
                                  "The request requires higher privileges than provided by the access token."}
            assert 'scope="webhooks:read webhooks:write"' in raw.headers["www-authenticate"]
            admin(scoped, "POST", "token-scopes", json={"scopes": ["webhooks:read"]})
            assert (await sdk.webhooks.list_webhook_endpoints()).pagination.total_count == 1
            with pytest.raises(PolarClientError) as write:
                await sdk.webhooks.update_webhook_endpoint(WEBHOOK_ENDPOINT_ID, enabled=True)
            with pytest.raises(PolarClientError) as redeliver:
                await sdk.webhooks.redeliver_webhook_event(WEBHOOK_ENDPOINT_ID)
            with pytest.raises(PolarClientError) as subs:
                await sdk.subscriptions.list()
            assert write.value.status_code == redeliver.value.status_code == subs.value.status_code == 403
            admin(scoped, "POST", "token-scopes", json={"scopes": ["webhooks:write"]})  # write also reads
            assert (await sdk.webhooks.get_webhook_endpoint(WEBHOOK_ENDPOINT_ID)).id == WEBHOOK_ENDPOINT_ID
            assert (await sdk.webhooks.update_webhook_endpoint(WEBHOOK_ENDPOINT_ID, name="x")).name == "x"
    finally:
        scoped.stop_or_kill()


# --- rate limit -------------------------------------------------------------------------------------------------
async def test_the_rate_limit_is_a_fixed_window_over_every_v1_path_and_its_429s_are_counted(tmp_path) -> None:
    window = 3.0
    limited = start_emulator(tmp_path, rate_limit_per_minute="5", rate_limit_window_seconds=str(window))
    try:
        async with polar(limited) as sdk:
            opened = time.monotonic()
            await sdk.customers.list()
            await asyncio.sleep(1.2)
            await sdk.subscriptions.list()
            await sdk.webhooks.list_webhook_endpoints()
            await sdk.webhooks.list_webhook_deliveries()
            with pytest.raises(polar_errors.ResourceNotFound):
                await sdk.customers.get_external("nobody")
            with pytest.raises(PolarRateLimitError) as exc:
                await sdk.webhooks.list_webhook_deliveries()
            raw = httpx.get(f"{limited.url}/v1/customers/", headers=H)
            assert (raw.status_code, raw.content, raw.headers["retry-after"]) == (429, b"", str(math.ceil(window)))
            assert exc.value.retry_after == math.ceil(window)  # the full window, as Polar's limiter answers
            admin(limited, "POST", "faults", json={"path": "/v1/subscriptions/", "kind": "429"})
            counted = admin(limited, "GET", "rate-limit").json()
            # A sliding window would still hold the 4 requests made 1.2 s in; a fixed one opens afresh.
            await asyncio.sleep(max(0.0, opened + window + 0.6 - time.monotonic()))
            for _ in range(4):
                await sdk.customers.list()
            with pytest.raises(PolarRateLimitError):  # the injected one
                await sdk.subscriptions.list()
        after = admin(limited, "GET", "rate-limit").json()
    finally:
        limited.stop_or_kill()
    assert counted["throttled"] == {"/v1/webhooks/deliveries": 1, "/v1/customers/": 1}
    assert counted["throttled_total"] == 2 and counted["per_window"] == 5 and counted["window_seconds"] == window
    assert after["throttled_total"] == 2 and after["injected"] == {"/v1/subscriptions/": 1}


def test_receiver_failing_flag_answers_500() -> None:
    """The test receiver's `failing` switch, which the failure tests rely on."""
    with webhook_receiver() as rx:
        rx.failing = True
        assert httpx.post(rx.url, content=b"{}").status_code == 500
        rx.failing = False
        assert httpx.post(rx.url, content=b"{}").status_code == 202
    assert isinstance(rx, Receiver) and len(rx.received) == 2
