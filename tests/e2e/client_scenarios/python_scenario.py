"""The chat service's scenario, run by tests/e2e/test_python_client.py with the interpreter of a virtual environment
that holds nothing but `pip install ./clients/python`: it imports only the installed client.

    python python_scenario.py limits     a Free user's day: 99 messages, the 100th, 20 reserves, the refusal, events
    python python_scenario.py ids        user ids with dots, @, /, spaces and non-ASCII
    python python_scenario.py outage     billing (BILLING_PID) stopped under each policy
Environment: NATS_URL, INGRESS_URL, STATUS_PAGE_SECRET, USER_ID (and BILLING_PID for `outage`).
Prints one JSON line of what it saw; exits non-zero on the first expectation that fails.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta

from polar_billing_client import BillingClient, BillingUnavailable, LimitExceeded, Unavailable, new_event_id

NATS_URL = os.environ["NATS_URL"]
USER = os.environ.get("USER_ID", "")


async def eventually(probe, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


async def limits() -> dict:
    client = await BillingClient.connect(NATS_URL)
    seen: list = []

    async def follow() -> None:
        async for event in client.events(durable=f"chat-app-{USER[-8:]}"):
            if getattr(event, "user_id", None) == USER:
                seen.append(event)

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.5)  # the durable exists before the first event
    await asyncio.gather(*(client.track_usage(user_id=USER, thread_id="t1", model="gpt-3.5-turbo", input_tokens=7,
                                              output_tokens=3, event_id=new_event_id()) for _ in range(99)))

    async def recorded() -> bool:
        return (await client.status(USER)).limits["messages_per_day"].used == 99

    assert await eventually(recorded), "the 99 messages never showed in status"
    assert (await client.check(USER, model="gpt-3.5-turbo", thread_id="t1")).allowed, "the 100th was refused"
    holds = await asyncio.gather(*(client.reserve(USER, estimated_tokens=10, thread_id="t1") for _ in range(20)))
    admitted = [h for h in holds if h.allowed]
    assert len(admitted) == 1 and admitted[0].reservation_id, f"{len(admitted)} reserves admitted, not 1"
    refused = await client.check(USER, thread_id="t1")
    midnight = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert not refused.allowed and refused.reason == "messages_per_day" and refused.resets_at == midnight, refused
    try:
        await client.require(USER, thread_id="t1")
        raise AssertionError("require did not raise")
    except LimitExceeded as exc:
        assert exc.limit == "messages_per_day"
    status = await client.status(USER)
    assert status.plan == "free" and status.limits["tokens_per_month"].used == 99 * 10 + 10, status.limits

    async def one_threshold() -> bool:
        return any(e.limit == "messages_per_day" and e.percent == 80 for e in seen)

    assert await eventually(one_threshold), "no 80 % threshold event"
    await asyncio.sleep(1.5)  # a second copy would have arrived by now
    thresholds = [(e.limit, e.percent) for e in seen if hasattr(e, "percent")]
    assert thresholds == [("messages_per_day", 80)], thresholds
    follower.cancel()
    await client.close()
    return {"admitted": len(admitted), "reason": refused.reason, "thresholds": thresholds}


async def ids() -> dict:
    client = await BillingClient.connect(NATS_URL, public_base_url=os.environ["INGRESS_URL"],
                                         status_page_secret=os.environ["STATUS_PAGE_SECRET"])
    users = json.loads(os.environ["USER_IDS"])
    for u in users:
        await client.track_usage(user_id=u, thread_id="t", model="gpt-3.5-turbo", input_tokens=40, output_tokens=2)

    async def counted() -> bool:
        used = [(await client.status(u)).limits["tokens_per_month"].used for u in users]
        return used == [42] * len(users)

    assert await eventually(counted), "usage of the unusual ids never showed in status"
    pages = {u: client.status_page_url(u) for u in users}
    checkouts = {u: (await client.checkout_url(u, "pro")).url for u in users}
    await client.close()
    return {"pages": pages, "checkouts": checkouts}


async def outage() -> dict:
    client = await BillingClient.connect(NATS_URL, timeout=0.5)
    before = await client.check(USER, thread_id="t1")  # billing answers: the last known answer, a refusal
    assert not before.allowed and before.reason == "messages_per_day"
    pid = int(os.environ["BILLING_PID"])
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    out: dict = {}
    try:
        await client.check(USER, on_unavailable="raise")
        raise AssertionError("raise did not raise")
    except BillingUnavailable:
        out["raise"] = "BillingUnavailable"
    allow = await client.check(USER, on_unavailable="allow")
    deny = await client.check(USER, on_unavailable="deny")
    assert allow.allowed and allow.degraded and allow.degraded.policy == "allow"
    assert not deny.allowed and deny.reason == "unavailable" and deny.degraded and deny.degraded.policy == "deny"
    reused = await client.check(USER, on_unavailable=Unavailable("deny", last_known_max_age=60))
    assert not reused.allowed and reused.reason == "messages_per_day", reused
    assert reused.degraded and reused.degraded.policy == "last_known" and reused.degraded.age_seconds is not None
    opened = await client.check(USER, on_unavailable=Unavailable(  # fail open on messages_per_day
        "deny", last_known_max_age=60, by_reason={"messages_per_day": "allow"}))
    assert opened.allowed and opened.degraded and opened.degraded.policy == "last_known"
    age = reused.degraded.age_seconds
    stale = await client.check(USER, on_unavailable=Unavailable(  # older than allowed: the fallback decides
        "deny", last_known_max_age=age / 2, by_reason={"messages_per_day": "allow"}))
    assert not stale.allowed and stale.reason == "unavailable" and stale.degraded and stale.degraded.policy == "deny"
    held = await client.reserve(USER, estimated_tokens=5, on_unavailable="allow")
    assert held.allowed and held.reservation_id is None and held.degraded is not None
    await client.close()
    out.update(allow=allow.allowed, deny=deny.reason, last_known=reused.reason, stale=stale.reason)
    return out


if __name__ == "__main__":
    result = asyncio.run({"limits": limits, "ids": ids, "outage": outage}[sys.argv[1]]())
    print(json.dumps(result))
