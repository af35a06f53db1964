"""billing.rpc.usage through the client, against a billing process: where the tokens went, from usage-sync's
rollups, checked against sums computed independently from the raw ledger."""
from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from billing import analytics, repository
from polar_billing_client.client import BillingClient
from polar_billing_client.contracts import UsageEvent, UsageReport
from usage_sync import ledger

from shared.db import connect
from shared.db.migrate import migrate
from shared.prices import PriceCatalog
from tests.conftest import Servers, drop_database, new_database
from tests.e2e.procs import base_env, start_service

pytestmark = pytest.mark.asyncio(loop_scope="module")
MODELS = ["gpt-4o", "claude-3-5-haiku-latest", "gemini-2.5-flash", "my-own-finetune"]  # the last has no price
TODAY = datetime.now(UTC).date()
START = TODAY - timedelta(days=39)
END = TODAY + timedelta(days=1)
USER = f"usr_an_{uuid.uuid4().hex[:8]}"
GROUPINGS = [[], ["day"], ["model"], ["thread"], ["day", "model"], ["day", "thread"], ["model", "thread"]]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple]:
    db_url = await new_database(servers)
    await migrate(db_url)
    billing = start_service("billing", base_env(NATS_URL=servers.nats_url, DATABASE_URL=db_url),
                            tmp_path_factory.mktemp("analytics"))
    billing.wait_ready()
    db = await connect(db_url)
    rng = random.Random(16)
    events = []
    for i in range(600):  # 40 days, 4 models, 12 threads; some custom keys, some cached input; days 7 and 8 empty
        day = rng.choice([d for d in range(40) if d not in (7, 8)])
        at = datetime.combine(START + timedelta(days=day), datetime.min.time(), UTC) + timedelta(
            seconds=rng.randint(0, 86_399))
        inp = rng.randint(10, 3000)
        events.append(UsageEvent(event_id=f"an-{i}", user_id=USER, thread_id=f"th-{rng.randint(1, 12)}",
                                 model=rng.choice(MODELS), input_tokens=inp, output_tokens=rng.randint(0, 900),
                                 cached_input_tokens=rng.randint(0, inp) if rng.random() < 0.3 else 0,
                                 custom_key=rng.random() < 0.15, occurred_at=min(at, datetime.now(UTC))))
    for i in range(0, len(events), 100):  # as usage-sync records them: in batches
        await ledger.record(db, events[i:i + 100])
    client = await BillingClient.connect(servers.nats_url)
    yield client, db
    await client.close()
    await db.close()
    assert billing.stop() == 0
    await drop_database(servers, db_url)


async def from_ledger(db: asyncpg.Connection, keys: list[str], user: str = USER, start: date = date.min,
                      end: date = date.max) -> dict[tuple, dict]:
    """The same sums, straight from the raw ledger (what the rollups must equal)."""
    out: dict[tuple, dict] = defaultdict(lambda: defaultdict(int))
    for r in await db.fetch("SELECT * FROM usage_events WHERE user_id = $1", user):
        if not start <= r["occurred_at"].astimezone(UTC).date() < end:
            continue
        key = tuple({"day": r["occurred_at"].astimezone(UTC).date(), "model": r["model"],
                     "thread": r["thread_id"]}[k] for k in keys)
        s = out[key]
        for f in ("input_tokens", "output_tokens", "cached_input_tokens", "billable_tokens"):
            s[f] += r[f]
        s["events"] += 1
        s["unpriced_events"] += r["cost_micro_usd"] is None
        s["cost"] += r["cost_micro_usd"] or 0
    return out


def assert_equal(report, expected: dict[tuple, dict], group_by: list[str]) -> None:
    field = {"day": "day", "model": "model", "thread": "thread_id"}
    got = {tuple(getattr(r, field[k]) for k in group_by): r for r in report.rows
           if not ("day" in group_by and r.events == 0)}
    assert set(got) == set(expected)
    for key, s in expected.items():
        row = got[key]
        assert (row.events, row.input_tokens, row.output_tokens, row.cached_input_tokens, row.billable_tokens,
                row.unpriced_events) == (s["events"], s["input_tokens"], s["output_tokens"],
                                         s["cached_input_tokens"], s["billable_tokens"], s["unpriced_events"]), key
        assert row.cost_usd == (round(s["cost"] / 1e6, 6) if s["events"] > s["unpriced_events"] else None), key


@pytest.mark.parametrize("group_by", GROUPINGS, ids=["-".join(g) or "totals" for g in GROUPINGS])
async def test_every_grouping_equals_the_raw_ledger(api, group_by: list[str]) -> None:
    client, db = api
    report = await client.usage(USER, from_=START, to=END, group_by=group_by)
    assert (report.from_, report.to, report.currency) == (START, END, "usd")
    expected = await from_ledger(db, group_by)
    assert_equal(report, expected, group_by)
    total = await from_ledger(db, [])
    assert report.totals.events == 600 == total[()]["events"]
    assert report.totals.billable_tokens == total[()]["billable_tokens"]


LONG_USER = f"usr_long_{uuid.uuid4().hex[:8]}"
LONG_START = date(2026, 1, 20)  # four calendar months and their edges: thread queries read whole months apart
LONG_RANGES = [(date(2026, 1, 20), date(2026, 5, 20)), (date(2026, 2, 1), date(2026, 4, 1)),
               (date(2026, 1, 25), date(2026, 3, 3)), (date(2026, 2, 10), date(2026, 2, 20)),
               (date(2026, 3, 31), date(2026, 4, 2)), (date(2026, 1, 1), date(2026, 6, 1))]


@pytest.mark.parametrize(("start", "end"), LONG_RANGES, ids=[f"{a}..{b}" for a, b in LONG_RANGES])
async def test_every_grouping_of_any_range_equals_the_raw_ledger(api, start: date, end: date) -> None:
    client, db = api
    if not await db.fetchval("SELECT count(*) FROM usage_events WHERE user_id = $1", LONG_USER):
        rng = random.Random(7)
        events = [UsageEvent(event_id=f"long-{i}", user_id=LONG_USER, thread_id=f"th-{rng.randint(1, 5)}",
                             model=rng.choice(MODELS), input_tokens=rng.randint(1, 500),
                             output_tokens=rng.randint(0, 500),
                             occurred_at=datetime.combine(LONG_START, datetime.min.time(), UTC)
                             + timedelta(seconds=rng.randint(0, 120 * 86_400)))
                  for i in range(400)]
        for i in range(0, len(events), 50):
            await ledger.record(db, events[i:i + 50])
    for group_by in GROUPINGS:
        report = await client.usage(LONG_USER, from_=start, to=end, group_by=group_by)
        assert_equal(report, await from_ledger(db, group_by, LONG_USER, start, end), group_by)


@pytest.mark.parametrize("group_by", GROUPINGS, ids=["-".join(g) or "totals" for g in GROUPINGS])
async def test_the_reply_postgresql_writes_equals_the_one_python_would(api, group_by: list[str]) -> None:
    """billing answers from repository.usage_report_json; analytics.report (used with a limit) is the same answer."""
    client, db = api
    got = await client.usage(USER, from_=START, to=END, group_by=group_by)
    dims = {"by_day": "day" in group_by, "by_model": "model" in group_by, "by_thread": "thread" in group_by}
    rows = await repository.usage_sums(db, USER, START, END, **dims)
    assert got == analytics.report(rows, START, END, group_by, None)
    assert got == UsageReport.model_validate_json(await repository.usage_report_json(db, USER, START, END, **dims))


async def test_empty_days_are_present_as_zeros(api) -> None:
    client, _ = api
    report = await client.usage(USER, from_=START, to=END, group_by=["day"])
    assert [r.day for r in report.rows] == [START + timedelta(days=d) for d in range(40)]
    for empty in (START + timedelta(days=7), START + timedelta(days=8)):
        row = next(r for r in report.rows if r.day == empty)
        assert (row.events, row.billable_tokens, row.cost_usd, row.unpriced_events) == (0, 0, None, 0)


async def test_a_limit_keeps_the_top_models_and_sums_the_rest_as_other(api) -> None:
    client, db = api
    report = await client.usage(USER, from_=START, to=END, group_by=["model"], limit=2)
    by_model = await from_ledger(db, ["model"])
    ranked = sorted(by_model, key=lambda k: -(by_model[k]["input_tokens"] + by_model[k]["output_tokens"]))
    assert [r.model for r in report.rows] == [ranked[0][0], ranked[1][0], "other"]
    rest = [by_model[k] for k in ranked[2:]]
    assert report.rows[2].events == sum(s["events"] for s in rest)
    assert report.rows[2].input_tokens == sum(s["input_tokens"] for s in rest)


async def test_unknown_models_cost_null_and_are_counted(api) -> None:
    client, db = api
    report = await client.usage(USER, from_=START, to=END, group_by=["model"])
    own = next(r for r in report.rows if r.model == "my-own-finetune")
    assert own.cost_usd is None and own.unpriced_events == own.events > 0
    assert await db.fetchval("SELECT count(*) FROM usage_events WHERE model = 'my-own-finetune' "
                             "AND (cost_micro_usd IS NOT NULL OR price_version IS NOT NULL)") == 0
    assert report.totals.unpriced_events == own.events and report.totals.cost_usd is not None


async def test_a_price_change_between_two_events_leaves_the_first_ones_cost(api, tmp_path: Path) -> None:
    _, db = api
    user = f"usr_price_{uuid.uuid4().hex[:6]}"
    first = UsageEvent(event_id=f"p1-{user}", user_id=user, thread_id="t", model="gpt-4o", input_tokens=1_000_000,
                       output_tokens=0, occurred_at=datetime.now(UTC) - timedelta(hours=1))
    await ledger.record(db, [first])  # the built-in catalog: $2.50 per 1M input
    override = tmp_path / "prices.json"
    override.write_text(json.dumps({"version": "test-2x", "prices": [
        {"pattern": "gpt-4o*", "effective": str(TODAY), "input": 5, "cached_input": 2.5, "output": 20}]}))
    second = first.model_copy(update={"event_id": f"p2-{user}", "occurred_at": datetime.now(UTC)})
    await ledger.record(db, [second], prices=PriceCatalog.load(override))
    rows = {r["event_id"]: r for r in await db.fetch(
        "SELECT event_id, cost_micro_usd, price_version FROM usage_events WHERE user_id = $1", user)}
    assert (rows[first.event_id]["cost_micro_usd"], rows[first.event_id]["price_version"]) == (2_500_000,
                                                                                               "2026-11-30")
    assert (rows[second.event_id]["cost_micro_usd"], rows[second.event_id]["price_version"]) == (5_000_000, "test-2x")
    assert Decimal(rows[first.event_id]["cost_micro_usd"]) / 10**6 == Decimal("2.5")


@pytest.mark.parametrize(("query", "field"), [
    ({"from": "2026-03-01", "to": "2026-02-01"}, "from"),  # from after to
    ({"from": "2024-01-01", "to": "2026-02-01"}, "to"),  # over 400 days
    ({"from": str(TODAY + timedelta(days=500))}, "from"),  # after the current period, where `to` defaults
    ({"group_by": ["week"]}, "group_by.0"),
    ({"group_by": ["day", "model", "thread"]}, "group_by"),
    ({"limit": 0}, "limit"),
])
async def test_a_bad_query_is_invalid_request_naming_the_field(api, query: dict, field: str) -> None:
    client, _ = api
    reply = await client.nc.request("billing.rpc.usage", json.dumps({"user_id": USER, **query}).encode(), timeout=5)
    error = json.loads(reply.data)["error"]
    assert error["code"] == "invalid_request" and error["field"] == field, error


async def test_the_client_refuses_a_bad_range_before_asking(api) -> None:
    client, _ = api
    with pytest.raises(ValueError, match="from: must be before to"):
        await client.usage(USER, from_=date(2026, 3, 1), to=date(2026, 2, 1))
