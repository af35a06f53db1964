"""The chat service's API through the shipped client, against a real billing process, PostgreSQL and the emulator."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio
from billing.apply_webhook import apply_webhook
from billing.polar_models import Webhook
from polar_billing_client.client import DEGRADED, BillingClient, BillingError, BillingUnavailable, LimitExceeded

from dev.embedded import EmbeddedNats
from polar_emulator.config import PRO_PRODUCT_ID, TEAM_PRODUCT_ID
from shared.db import connect
from shared.db.migrate import migrate
from shared.periods import day_of, month_of
from shared.plans import PlanCatalog
from tests.conftest import Servers, drop_database, new_database
from tests.e2e.procs import base_env, start_service
from tests.support.emulator import TOKEN, admin, start_emulator
from tests.support.webhooks import body_of, example, retarget

CATALOG = PlanCatalog(PRO_PRODUCT_ID, TEAM_PRODUCT_ID)


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(servers: Servers, tmp_path_factory) -> AsyncIterator[tuple]:
    db_url = await new_database(servers)
    await migrate(db_url)
    d = tmp_path_factory.mktemp("api")
    emulator = start_emulator(d)
    env = base_env(NATS_URL=servers.nats_url, DATABASE_URL=db_url, POLAR_ACCESS_TOKEN=TOKEN,
                   POLAR_SERVER=emulator.url, POLAR_PRO_PRODUCT_ID=PRO_PRODUCT_ID,
                   POLAR_TEAM_PRODUCT_ID=TEAM_PRODUCT_ID, PUBLIC_BASE_URL="http://chat.example")
    billing = start_service("billing", env, d)
    billing.wait_ready()
    client = await BillingClient.connect(servers.nats_url)
    db = await connect(db_url)
    yield client, db, emulator, billing
    await db.close()
    await client.close()
    assert billing.stop() == 0
    log = billing.log.read_text()
    assert "customer_session_token" not in log and TOKEN not in log  # portal URLs and the token never logged
    emulator.stop_or_kill()
    await drop_database(servers, db_url)


def user() -> str:
    return f"usr_{uuid.uuid4().hex[:10]}"


async def subscribe(db: asyncpg.Connection, user_id: str, plan: str = "pro", status: str = "active") -> None:
    """The subscription as billing learns it: a Polar webhook through billing's own apply path."""
    payload = retarget(example("subscription.active"), user_id)
    payload["data"]["customer"]["external_id"] = user_id
    payload["data"]["product_id"] = PRO_PRODUCT_ID if plan == "pro" else TEAM_PRODUCT_ID
    payload["data"]["status"] = status
    now = datetime.now(UTC)
    payload["data"]["current_period_start"] = (now - timedelta(days=3)).isoformat()
    payload["data"]["current_period_end"] = (now + timedelta(days=27)).isoformat()
    await apply_webhook(db, CATALOG, Webhook.parse(f"wh-{uuid.uuid4()}", body_of(payload)))


async def use(db: asyncpg.Connection, user_id: str, limit: str, used: int, period: tuple | None = None) -> None:
    """Counters as usage-sync leaves them (usage-sync's own path is tested in test_usage_flow)."""
    now = datetime.now(UTC)
    start, end = period or (day_of(now) if limit == "messages_per_day" else month_of(now))
    await db.execute("INSERT INTO usage_counters (user_id, limit_name, period_start, period_end, used) "
                     "VALUES ($1, $2, $3, $4, $5)", user_id, limit, start, end, used)


async def test_free_user_at_zero_is_allowed_with_free_limits(api) -> None:
    client, *_ = api
    d = await client.check(user(), model="claude-3-5-haiku-latest", thread_id="t1")
    assert d.allowed and d.plan == "free" and d.reason is None and not d.overage
    assert {k: (v.used, v.limit) for k, v in d.limits.items()} == {
        "tokens_per_month": (0, 100_000), "threads_per_month": (0, 50), "messages_per_day": (0, 100)}
    assert d.limits["tokens_per_month"].resets_at == month_of(datetime.now(UTC))[1]


@pytest.mark.parametrize(("used", "allowed"), [(99_999, True), (100_000, False), (150_000, False)])
async def test_free_tokens_just_under_at_and_over_the_cap(api, used: int, allowed: bool) -> None:
    client, db, *_ = api
    u = user()
    await use(db, u, "tokens_per_month", used)
    d = await client.check(u)
    assert d.allowed is allowed
    if not allowed:
        assert d.reason == "tokens_per_month" and d.resets_at == month_of(datetime.now(UTC))[1]
        with pytest.raises(LimitExceeded) as exc:
            await client.require(u)
        assert exc.value.limit == "tokens_per_month"


async def test_an_estimate_that_would_cross_the_free_cap_is_refused(api) -> None:
    client, db, *_ = api
    u = user()
    await use(db, u, "tokens_per_month", 99_000)
    assert (await client.check(u, estimated_tokens=1_000)).allowed
    assert not (await client.check(u, estimated_tokens=1_001)).allowed


@pytest.mark.parametrize(("used", "allowed"), [(99, True), (100, False)])
async def test_free_messages_per_day(api, used: int, allowed: bool) -> None:
    client, db, *_ = api
    u = user()
    await use(db, u, "messages_per_day", used)
    d = await client.check(u)
    assert d.allowed is allowed
    if not allowed:
        assert d.reason == "messages_per_day" and d.resets_at == day_of(datetime.now(UTC))[1]


async def test_free_threads_count_new_threads_only(api) -> None:
    client, db, *_ = api
    u = user()
    start, _end = month_of(datetime.now(UTC))
    await use(db, u, "threads_per_month", 50)
    await db.execute("INSERT INTO usage_threads (user_id, period_start, thread_id) VALUES ($1, $2, 'old')", u, start)
    assert (await client.check(u, thread_id="old")).allowed  # a message in an existing thread
    d = await client.check(u, thread_id="brand-new")
    assert not d.allowed and d.reason == "threads_per_month"
    u2 = user()
    await use(db, u2, "threads_per_month", 49)
    assert (await client.check(u2, thread_id="brand-new")).allowed


async def test_the_binding_limit_is_the_one_that_resets_last(api) -> None:
    client, db, *_ = api
    u = user()
    await use(db, u, "messages_per_day", 100)
    await use(db, u, "tokens_per_month", 100_000)
    d = await client.check(u)
    assert d.reason == "tokens_per_month"  # a new day would not help; the month must end


async def test_free_refuses_models_outside_its_list_and_custom_keys(api) -> None:
    client, *_ = api
    assert (await client.check(user(), model="gpt-4o")).reason == "model_not_in_plan"
    assert (await client.check(user(), model="gpt-3.5-turbo")).allowed
    assert (await client.check(user(), custom_key=True)).reason == "custom_key_not_in_plan"


async def test_pro_goes_into_overage_past_its_tokens_and_caps_messages(api) -> None:
    client, db, *_ = api
    u = user()
    await subscribe(db, u, "pro")
    row = await db.fetchrow("SELECT current_period_start, current_period_end FROM subscriptions WHERE user_id=$1", u)
    period = (row["current_period_start"], row["current_period_end"])
    await use(db, u, "tokens_per_month", 999_999, period)
    d = await client.check(u, model="claude-opus-4", custom_key=True)
    assert d.allowed and d.plan == "pro" and not d.overage
    assert d.limits["tokens_per_month"].resets_at == period[1]
    await db.execute("UPDATE usage_counters SET used = 1_000_001 WHERE user_id = $1", u)
    d = await client.check(u)
    assert d.allowed and d.overage and d.limits["threads_per_month"].limit is None
    await use(db, u, "messages_per_day", 1000)
    assert (await client.check(u)).reason == "messages_per_day"


async def test_team_is_unlimited(api) -> None:
    client, db, *_ = api
    u = user()
    await subscribe(db, u, "team")
    await use(db, u, "messages_per_day", 50_000)
    d = await client.check(u, model="gpt-5", thread_id="x", estimated_tokens=10**9)
    assert d.allowed and d.plan == "team" and all(v.limit is None for v in d.limits.values())


async def test_past_due_keeps_the_plan_revoked_falls_back_to_free_unpaid_is_inactive(api) -> None:
    client, db, *_ = api
    u = user()
    await subscribe(db, u, "pro", status="past_due")
    assert (await client.check(u, model="gpt-4o")).plan == "pro"
    status = await client.status(u)
    assert status.plan == "pro" and status.status == "past_due"
    r = user()
    await subscribe(db, r, "pro", status="canceled")
    d = await client.check(r, model="gpt-4o")
    assert d.plan == "free" and d.reason == "model_not_in_plan"
    x = user()
    await subscribe(db, x, "pro", status="unpaid")
    d = await client.check(x, model="gpt-4o")
    assert d.plan == "free" and d.reason == "subscription_inactive"


async def test_200_concurrent_reserves_against_room_for_k_admit_exactly_k(api) -> None:
    client, db, *_ = api
    u, k = user(), 37
    await use(db, u, "tokens_per_month", 100_000 - k * 1_000)
    replies = await asyncio.gather(*(client.reserve(u, estimated_tokens=1_000, timeout=10) for _ in range(200)))
    granted = [r.reservation_id for r in replies if r.allowed]
    assert len(granted) == k and len(set(granted)) == k
    assert {r.reason for r in replies if not r.allowed} == {"tokens_per_month"}
    assert (await client.check(u)).limits["tokens_per_month"].used == 100_000
    assert await client.release(granted[0]) is True
    assert await client.release(granted[0]) is False  # only once
    assert (await client.reserve(u, estimated_tokens=1_000)).allowed  # the released room is there again


async def test_an_expired_reservation_frees_its_allowance(api) -> None:
    client, db, *_ = api
    u = user()
    await use(db, u, "tokens_per_month", 99_000)
    held = await client.reserve(u, estimated_tokens=1_000, ttl_seconds=1)
    assert held.allowed and not (await client.reserve(u, estimated_tokens=1_000)).allowed
    await asyncio.sleep(1.2)
    assert (await client.reserve(u, estimated_tokens=1_000)).allowed


async def test_status_of_an_unknown_user_is_free_with_zero_usage(api) -> None:
    client, *_ = api
    s = await client.status(user())
    assert (s.plan, s.status, s.customer_id, s.cancel_at_period_end) == ("free", None, None, False)
    assert all(v.used == 0 for v in s.limits.values()) and s.credits.model_dump() == {"granted": 0, "used": 0,
                                                                                       "balance": 0}


async def test_checkout_and_portal_through_polar(api) -> None:
    client, _db, emulator, _ = api
    u = user()
    link = await client.checkout_url(u, "pro")
    assert link.url.startswith(emulator.url) and link.checkout_id
    with pytest.raises(BillingError) as exc:
        await client.portal_url(u)
    assert exc.value.code == "no_customer"
    admin(emulator, "POST", f"checkouts/{link.checkout_id}/complete")
    portal = await client.portal_url(u, return_url="http://chat.example/settings")
    assert "customer_session_token=" in portal.url and portal.expires_at > datetime.now(UTC)
    checkout = admin(emulator, "GET", "events").json()  # the emulator saw our success and return URLs
    assert checkout is not None


@pytest.mark.parametrize(("fault", "code"), [({"kind": "429", "retry_after": 9}, "polar_rate_limited"),
                                             ({"kind": "500", "count": 3}, "polar_unavailable"),
                                             ({"kind": "502", "count": 1}, None)])
async def test_polar_failures_become_typed_errors_after_bounded_retries(api, fault, code) -> None:
    client, db, emulator, _ = api
    admin(emulator, "POST", "faults", json={"path": "/v1/checkouts/", **fault})
    try:
        if code is None:
            assert (await client.checkout_url(user(), "team")).url  # one 502, then the retry succeeds
        else:
            with pytest.raises(BillingError) as exc:
                await client.checkout_url(user(), "team")
            assert exc.value.code == code
            if code == "polar_rate_limited":
                assert exc.value.retry_after == 9
                # Every process honours it: the next link request is refused at once, and never reaches Polar.
                sent = len(admin(emulator, "GET", "events").json()["requests"])
                with pytest.raises(BillingError) as again:
                    await client.checkout_url(user(), "team")
                assert again.value.code == "polar_rate_limited" and 1 <= (again.value.retry_after or 0) <= 9
                assert len(admin(emulator, "GET", "events").json()["requests"]) == sent
    finally:
        admin(emulator, "DELETE", "faults")
        await db.execute("DELETE FROM polar_rate_limited")  # the next cases start unthrottled


async def test_bad_requests_get_an_error_naming_the_field_never_a_timeout(api) -> None:
    client, *_ = api
    nc = client.nc
    import json

    for subject, body, code, field in [
        ("billing.rpc.check", b"{not json", "invalid_request", None),
        ("billing.rpc.check", b"{}", "invalid_request", "user_id"),
        ("billing.rpc.reserve", b'{"user_id": "u"}', "invalid_request", "estimated_tokens"),
        ("billing.rpc.check", b'{"user_id": "u", "estimated_tokens": -1}', "invalid_request", "estimated_tokens"),
        ("billing.rpc.checkout", b'{"user_id": "u", "plan": "enterprise"}', "unknown_plan", "plan"),
    ]:
        reply = json.loads((await nc.request(subject, body, timeout=2)).data)
        assert reply["error"]["code"] == code, (subject, body, reply)
        assert reply["error"].get("field") == field


async def test_when_billing_does_not_answer_the_client_follows_its_policy(tmp_path) -> None:
    lonely = EmbeddedNats(tmp_path / "nats", sync_always=False)  # a NATS with no billing on it
    client = await BillingClient.connect(lonely.start(), )
    try:
        with pytest.raises(BillingUnavailable):
            await client.check("u", timeout=0.3)
        allowed = await client.check("u", timeout=0.3, on_unavailable="allow")
        denied = await client.check("u", timeout=0.3, on_unavailable="deny")
        held = await client.reserve("u", estimated_tokens=10, timeout=0.3, on_unavailable="allow")
        assert allowed.allowed and not denied.allowed and denied.reason == "unavailable"
        assert held.allowed and held.reservation_id is None
        assert DEGRADED.labels("check", "allow")._value.get() >= 1
    finally:
        await client.close()
        lonely.stop()
