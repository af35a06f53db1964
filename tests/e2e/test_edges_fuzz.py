"""Hostile but valid input at the edges, as Polar (or a confused caller) could send it: nothing lost, nothing stuck.

1. Every webhook type in Polar's OpenAPI document, a few payloads each generated from its schema (tests/support/fuzz.py),
   plus the same payloads with edge values the schema still allows: control characters and NUL, 10,000-character
   strings, dates at year 1 / 9999 and odd offsets, numbers in metadata, external ids of thousands of characters.
   Each is signed and posted to a real ingress with a real billing behind it: answered 2xx, then logged `applied` or
   `skipped` (never `failed`, stuck or missing), and the log keeps the payload, saying where it had to change it.
2. A thousand random byte strings, truncated and oversized bodies, signed and not, at POST /webhooks/polar: never a
   5xx, never a hang, and a valid webhook posted after them is still applied.
3. Random and near-valid JSON to every billing.rpc.* verb and to usage.event.x: every request answered within 2 s,
   billing still ready, junk usage dead-lettered with its reason, a valid usage event after the junk recorded.

Failures are written to test-output/<test>/findings.json with the smallest payload of each kind and billing's log line.
"""
from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import socket
import time
import typing
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import nats.errors
import pytest
from billing.apply_webhook import apply_webhook
from billing.polar_models import Webhook
from billing.rpc import ENDPOINTS
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from polar_billing_client.contracts import UsageEvent
from pydantic import ValidationError

from shared.db import connect
from shared.plans import PlanCatalog
from tests.conftest import Servers
from tests.e2e.procs import ServiceProcess, start_service
from tests.e2e.stack import SECRET, reset_webhook_consumer, stack_env, start_billing
from tests.e2e.usage_stack import start_usage_sync
from tests.support import fuzz
from tests.support.emulator import TOKEN
from tests.support.webhooks import EXAMPLES, PRO_PRODUCT, body_of, example, retarget, sign

PER_SCHEMA = 3  # generated payloads per webhook schema; each also goes out once per kind of edge value
SETTLE_SECONDS = 25  # every webhook posted has its final log row by then (billing needs ~3 s for them all)
HTTP_TIMEOUT = httpx.Timeout(10.0)
# Idle connections are dropped by the client before uvicorn's 5 s keep-alive ends them: a request on a connection the
# server is closing at that moment fails on the client side, which would be this harness's fault, not the edge's.
HTTP_LIMITS = httpx.Limits(keepalive_expiry=2.0)
RPC_TIMEOUT = 2.0
MAX_BODY = 1024 * 1024  # ingress's limit


@dataclass
class Stack:
    ingress: ServiceProcess
    billing: ServiceProcess
    db: asyncpg.Connection


@pytest.fixture
async def stack(servers: Servers, database_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    await reset_webhook_consumer(servers.nats_url)
    env = stack_env(servers.nats_url, database_url)
    ingress = start_service("ingress", env, tmp_path)
    ingress.wait_ready()
    billing = start_billing(env, tmp_path)
    db = await connect(database_url)
    try:
        yield Stack(ingress, billing, db)
    finally:
        await db.close()
        for svc in (ingress, billing):
            svc.stop_or_kill(15)


async def post_all(http: httpx.AsyncClient, url: str, requests: list[tuple[bytes, dict[str, str]]],
                   concurrency: int = 8) -> list[int | str]:
    """POST each (body, headers); the status, or the name of the exception (a timeout is a hang)."""
    sem = asyncio.Semaphore(concurrency)

    async def one(body: bytes, headers: dict[str, str]) -> int | str:
        async with sem:
            try:
                return (await http.post(url, content=body, headers=headers)).status_code
            except httpx.HTTPError as exc:
                return type(exc).__name__

    return list(await asyncio.gather(*(one(b, h) for b, h in requests)))


def log_lines(svc: ServiceProcess, needle: str, limit: int = 3) -> list[str]:
    return [line for line in svc.log.read_text(errors="replace").splitlines() if needle in line][:limit]


def kind_of(error: str | None) -> str:
    """An error message without its particulars: one kind of failure, whatever the values."""
    text = re.sub(r"datetime\.datetime\(.*\)", "datetime(…)", error or "no error recorded")
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    return re.sub(r"\d+", "N", text)[:160]


def write_findings(output_dir: Path, findings: list[dict[str, Any]]) -> Path:
    path = output_dir / "findings.json"
    path.write_text(json.dumps(findings, indent=1, ensure_ascii=True, default=str))
    return path


# --- 1. Polar's own schema ---------------------------------------------------------------------------------------
@dataclass
class Case:
    webhook_id: str
    schema: str
    edge: str  # "generated" or the kind of edge value put in
    payload: dict[str, Any]
    base: dict[str, Any]  # the generated payload the edge values were put into
    body: bytes


def cases_for(name: str, tag: str) -> list[Case]:
    generated = fuzz.webhook_payloads(name, PER_SCHEMA)
    assert generated, f"no schema-valid payload generated for {name}"
    cases = []
    for i, payload in enumerate(generated):
        for edge, variant in {"generated": payload, **fuzz.with_edges(name, payload, seed=i)}.items():
            assert fuzz.validator(name).is_valid(variant)
            body = body_of(variant)
            assert len(body) < MAX_BODY, (name, edge, len(body))
            short = name.removeprefix("Webhook").removesuffix("Payload")
            cases.append(Case(f"fz-{tag}-{short}-{i}-{edge}", name, edge, variant, payload, body))
    return cases


async def apply_error(db: asyncpg.Connection, payload: dict[str, Any]) -> str | None:
    """What billing's apply raises for `payload`, run here on the test's database and rolled back (diagnosis only)."""
    tr = db.transaction()
    await tr.start()
    logging.disable(logging.WARNING)  # its warnings (unknown product…) are billing's log, not this test's
    try:
        await apply_webhook(db, PlanCatalog(PRO_PRODUCT, "prod_team"), Webhook.parse("fz-diagnosis", payload))
        return None
    except Exception as exc:  # noqa: BLE001
        return type(exc).__name__
    finally:
        logging.disable(logging.NOTSET)
        await tr.rollback()


async def culprits(db: asyncpg.Connection, case: Case) -> list[dict[str, Any]]:
    """The edge values that alone make the generated payload fail as `case` did, each also shown in Polar's example
    payload of the type when that has the field: the smallest reproduction."""
    error = await apply_error(db, case.payload)
    if error is None or case.edge == "generated":
        return []
    found = []
    for path, value in fuzz.leaves(case.payload):
        if not fuzz.has_at(case.base, path) or fuzz.get_at(case.base, path) == value:
            continue
        alone = copy.deepcopy(case.base)
        fuzz.set_at(alone, path, value)
        if await apply_error(db, alone) == error:
            entry: dict[str, Any] = {"path": ".".join(map(str, path)), "value": value if len(repr(value)) < 200
                                     else repr(value)[:200] + "…"}
            if (EXAMPLES / f"{case.payload['type']}.json").exists():
                ex = example(case.payload["type"])
                if fuzz.has_at(ex, path):
                    fuzz.set_at(ex, path, value)
                    if await apply_error(db, ex) == error:
                        entry["example"] = ex
            found.append(entry)
            if len(found) == 3:
                break
    return found


async def generate_and_post(url: str) -> tuple[list[Case], list[int | str]]:
    """Every schema's cases, each schema's posted while the next one's are generated; the answers, in order."""
    tag = uuid.uuid4().hex[:6]
    cases: list[Case] = []
    posting = []
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, limits=HTTP_LIMITS) as http:
        for name in fuzz.webhook_schema_names():
            batch = await asyncio.to_thread(cases_for, name, tag)
            cases += batch
            posting.append(asyncio.create_task(post_all(
                http, url, [(c.body, sign(SECRET, c.body, c.webhook_id)) for c in batch])))
        return cases, [status for task in posting for status in await task]


async def settled_rows(db: asyncpg.Connection, ids: list[str]) -> dict[str, asyncpg.Record]:
    """The log rows of `ids` once each has its final status, or as they are at the deadline."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        settled = await db.fetchval("SELECT count(*) FROM webhook_log WHERE webhook_id = ANY($1) "
                                    "AND status <> 'received'", ids)
        if settled == len(ids):
            break
        await asyncio.sleep(0.25)
    return {r["webhook_id"]: r for r in await db.fetch(
        "SELECT webhook_id, status, error, payload::text AS payload FROM webhook_log WHERE webhook_id = ANY($1)", ids)}


def problem_of(status: int | str, row: asyncpg.Record | None, case: Case) -> tuple[str, str] | None:
    """(kind of problem, detail), or None when the webhook was answered 2xx and logged as it must be."""
    if not (isinstance(status, int) and 200 <= status < 300):
        return f"answered {status}", str(status)
    if row is None:
        return f"not logged within {SETTLE_SECONDS}s", "absent"
    if row["status"] == "received":
        return f"stuck in received after {SETTLE_SECONDS}s", "received"
    if row["status"] == "failed":
        return f"failed: {kind_of(row['error'])}", row["error"]
    if row["status"] == "skipped" and not (row["error"] or "").strip():
        return "skipped without a reason", "skipped"
    # The log keeps the payload for replay: a NUL shows as U+FFFD, a redacted field as "[redacted]", nothing else.
    changed = fuzz.kept_as_sent(case.payload, fuzz.loads_logged(row["payload"]))
    return ("logged payload is not the one sent", changed) if changed else None


async def finding(stack: Stack, problem: str, found: list[tuple[Case, str]]) -> dict[str, Any]:
    """One kind of problem: how often, where, the smallest payload that had it, the fields that alone cause it,
    and billing's log line about it."""
    smallest, detail = min(found, key=lambda f: len(f[0].body))
    seq = next((json.loads(line).get("seq") for line in log_lines(stack.ingress, smallest.webhook_id, 1)), None)
    causes: dict[str, Any] = {}
    if problem.startswith("failed"):
        per_schema = {c.schema: c for c, _ in sorted(found, key=lambda f: -len(f[0].body))}  # the smallest of each
        for case in sorted(per_schema.values(), key=lambda c: len(c.body))[:6]:
            for cause in await culprits(stack.db, case):
                causes.setdefault(cause["path"], cause)
    return {
        "problem": problem, "count": len(found),
        "schemas": sorted({c.schema for c, _ in found}), "edges": sorted({c.edge for c, _ in found}),
        "culprits": list(causes.values()),
        "smallest": {"webhook_id": smallest.webhook_id, "detail": detail, "payload": smallest.payload},
        "billing_log": log_lines(stack.billing, f'"stream_seq": {seq},') if seq else [],
    }


def describe(finding: dict[str, Any]) -> str:
    fields = sorted({(c["path"], str(c["value"])[:40]) for c in finding["culprits"]})[:8]
    return (f"- {finding['problem']} ×{finding['count']} ({', '.join(finding['edges'])}; "
            f"e.g. {finding['smallest']['webhook_id']}: {str(finding['smallest']['detail'])[:200]})\n"
            f"    fields that alone cause it: {fields}\n    billing: {finding['billing_log'][:1]}")


async def test_every_webhook_polar_s_schema_allows_is_answered_2xx_and_logged_applied_or_skipped(
    stack: Stack, output_dir: Path
) -> None:
    t0 = time.monotonic()
    cases, statuses = await generate_and_post(f"{stack.ingress.url}/webhooks/polar")
    posted_in = time.monotonic() - t0
    rows = await settled_rows(stack.db, [c.webhook_id for c in cases])

    problems: dict[str, list[tuple[Case, str]]] = defaultdict(list)
    for case, status in zip(cases, statuses):
        if found := problem_of(status, rows.get(case.webhook_id), case):
            problems[found[0]].append((case, found[1]))
    findings = [await finding(stack, problem, found) for problem, found in sorted(problems.items())]
    path = write_findings(output_dir, findings)
    print(f"\nwebhooks: {len(cases)} from {len(fuzz.webhook_schema_names())} schemas "
          f"({dict(Counter(c.edge for c in cases))}), generated and posted in {posted_in:.1f}s; "
          f"outcomes {dict(Counter(r['status'] for r in rows.values()))}")
    assert not findings, (f"{sum(f['count'] for f in findings)} of {len(cases)} schema-valid webhooks went wrong "
                          f"({path}):\n" + "\n".join(describe(f) for f in findings))


# --- 2. junk at the webhook endpoint -----------------------------------------------------------------------------
def junk_requests() -> list[tuple[str, bytes, dict[str, str]]]:
    """(what, body, headers): random bytes sent five ways, signed envelopes around junk, truncated and oversized
    webhooks."""
    bodies = fuzz.examples(fuzz.BYTES, 1000)
    assert len(bodies) == 1000
    out: list[tuple[str, bytes, dict[str, str]]] = []
    for i, body in enumerate(bodies):
        way = i % 5
        if way == 0:
            out.append(("unsigned", body, {"content-type": "application/json"}))
        elif way == 1:
            out.append(("signed", body, fuzz.sign_bytes(SECRET, body)))
        elif way == 2:
            out.append(("signed other body", body, fuzz.sign_bytes(SECRET, body + b" ")))
        elif way == 3:
            headers = fuzz.sign_bytes(SECRET, body)
            headers.update([("webhook-timestamp", "-1"), ("webhook-signature", "v1,!!!"),
                            ("webhook-timestamp", "1e400"), ("webhook-signature", "v2 v1"),
                            ("webhook-id", "x" * 300), ("webhook-signature", "v1,AAAA v1 ,"),
                            ("webhook-timestamp", str(int(time.time()) - 3600))][i % 7: i % 7 + 1])
            out.append(("signed, bad headers", body, headers))
        else:
            out.append(("signed, text/plain", body, {**fuzz.sign_bytes(SECRET, body), "content-type": "text/plain"}))
    types = ["subscription.active", "order.paid", "customer.created", "checkout.updated", "benefit_grant.created",
             "customer.state_changed", "some.new_type"]
    stamps = ["2026-09-01T12:00:00Z", "yesterday", "", "2026-02-30T00:00:00Z", "0001-01-01T00:00:00Z"]
    for i, data in enumerate(fuzz.examples(fuzz.JSON, 40)):  # stored by ingress: billing must get past them
        envelope = fuzz.json_bytes({"type": types[i % len(types)], "timestamp": stamps[i % len(stamps)], "data": data})
        out.append(("signed envelope, junk data", envelope, fuzz.sign_bytes(SECRET, envelope)))
    valid = body_of(retarget(example("subscription.active"), "junk-trunc"))
    for cut in (0, 1, 2, len(valid) // 3, len(valid) // 2, len(valid) - 1):
        out.append(("truncated, signed as cut", valid[:cut], fuzz.sign_bytes(SECRET, valid[:cut])))
        out.append(("truncated, signed whole", valid[:cut], fuzz.sign_bytes(SECRET, valid)))
    filler = b'{"type":"customer.created","timestamp":"2026-09-01T12:00:00Z","data":{"id":"big","name":"'
    for size in (MAX_BODY - 1, MAX_BODY, MAX_BODY + 1, 4 * MAX_BODY):
        big = filler + b"x" * max(0, size - len(filler) - 3) + b'"}}'
        out.append((f"oversized {size}", big, fuzz.sign_bytes(SECRET, big)))
    return out


def raw_http(port: int, request: bytes, read_timeout: float = 8.0) -> int | str:
    """Send bytes as they are (what httpx will not send: lying lengths, a body cut off mid-way), then half-close.
    The answer's status, "closed" or "reset" when the server hung up without one, or "hang"."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            return "hang"
        except ConnectionResetError:
            return "reset"
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(match.group(1)) if match else "closed"


def raw_requests() -> list[tuple[str, bytes]]:
    body = body_of(retarget(example("customer.created"), "raw"))
    signed = "".join(f"{k}: {v}\r\n" for k, v in fuzz.sign_bytes(SECRET, body).items()).encode()
    head = b"POST /webhooks/polar HTTP/1.1\r\nhost: x\r\n" + signed
    return [
        ("declares more than it sends", head + b"content-length: 5000\r\n\r\n" + body[:100]),
        ("declares over the limit", head + f"content-length: {50 * MAX_BODY}\r\n\r\n".encode() + body[:100]),
        ("declares a negative length", head + b"content-length: -1\r\n\r\n" + body),
        ("declares a non-number", head + b"content-length: abc\r\n\r\n" + body),
        ("two lengths", head + f"content-length: {len(body)}\r\ncontent-length: 3\r\n\r\n".encode() + body),
        ("chunked, cut off", head + b"transfer-encoding: chunked\r\n\r\n400\r\n" + body[:50]),
        ("chunked, bad size", head + b"transfer-encoding: chunked\r\n\r\nzz\r\n" + body + b"\r\n0\r\n\r\n"),
        ("chunked, over the limit", head + b"transfer-encoding: chunked\r\n\r\n"
         + (f"{0x10000:x}\r\n".encode() + b"x" * 0x10000 + b"\r\n") * 17 + b"0\r\n\r\n"),
        ("headers only, cut off", b"POST /webhooks/polar HTTP/1.1\r\nhost: x\r\ncontent-le"),
        ("not HTTP", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(256))),
    ]


async def test_junk_at_the_webhook_endpoint_gets_no_5xx_and_no_hang_and_a_valid_webhook_still_applies(
    stack: Stack, output_dir: Path
) -> None:
    requests = junk_requests()
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, limits=HTTP_LIMITS) as http:
        statuses = await post_all(http, f"{stack.ingress.url}/webhooks/polar", [(b, h) for _, b, h in requests])
    raw = [(what, await asyncio.to_thread(raw_http, stack.ingress.port, data)) for what, data in raw_requests()]
    took = time.monotonic() - t0

    bad = [(what, status, body[:200]) for (what, body, _), status in zip(requests, statuses)
           if not isinstance(status, int) or status >= 500]
    bad += [(what, status, b"") for what, status in raw if status == "hang" or (isinstance(status, int) and status >= 500)]
    by_way: dict[str, Counter] = defaultdict(Counter)
    for (what, _, _), status in zip(requests, statuses):
        by_way[what.split(" ")[0] if what.startswith("oversized") else what][status] += 1
    print(f"\njunk: {len(requests)} bodies + {len(raw)} raw requests in {took:.1f}s: "
          f"{ {k: dict(v) for k, v in by_way.items()} }; raw {dict(raw)}")

    body, webhook_id = body_of(retarget(example("subscription.active"), "after-junk")), f"wh-after-junk-{uuid.uuid4()}"
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, limits=HTTP_LIMITS) as http:
        after = await post_all(http, f"{stack.ingress.url}/webhooks/polar", [(body, sign(SECRET, body, webhook_id))])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = await stack.db.fetchval("SELECT status FROM webhook_log WHERE webhook_id = $1", webhook_id)
        if status in ("applied", "skipped", "failed"):
            break
        await asyncio.sleep(0.2)
    write_findings(output_dir, [{"what": w, "status": s, "body": b.decode("utf-8", "replace")} for w, s, b in bad])
    assert not bad, f"{len(bad)} junk requests got a 5xx or no answer: {bad[:10]}"
    assert after == [202] and status == "applied", (after, status, log_lines(stack.billing, "error", 5))


# --- 3. junk over NATS -------------------------------------------------------------------------------------------
RPC_PER_VERB = 40  # random JSON values; as many near-valid requests; and the raw junk below
USAGE_JUNK = 120
RAW_JUNK = [b"", b"{", b"null", b"[]", b'"x"', b"\x00\xff\xfe", b"{" * 5000, b'{"user_id":' + b"1" * 5000 + b"}",
            b'{"user_id":"a","user_id":"b"}', json.dumps({"user_id": "x" * 200_000}).encode()]
HOSTILE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    **{k: fuzz.HOSTILE_TEXT | st.text(max_size=300)
       for k in ("user_id", "thread_id", "model", "reservation_id", "event_id")},
    "plan": st.sampled_from(["pro", "team", "free", "PRO", "pro\x00"]) | fuzz.HOSTILE_TEXT,
    "group_by": st.lists(st.sampled_from(["day", "model", "thread", "week", ""]), max_size=4) | fuzz.JSON,
    **{k: st.sampled_from(["0001-01-01", "9999-12-31", "2026-02-30", "2026-10-01T00:00:00Z", ""]) | fuzz.JSON
       for k in ("from", "to")},
    **{k: fuzz.HOSTILE_NUMBERS | st.integers()
       for k in ("estimated_tokens", "ttl_seconds", "input_tokens", "output_tokens", "cached_input_tokens", "limit")},
    **{k: st.sampled_from(["javascript:alert(1)", "http://", "https://x/" + "a" * 1990, "//evil", "\x00", "",
                           "https://example.com/{CHECKOUT_ID}?a=%00"]) for k in ("success_url", "return_url")},
    "occurred_at": st.sampled_from(fuzz.EXTREME_DATES + ("2026-13-01T00:00:00Z", "yesterday", "2026-10-01")),
    "custom_key": st.booleans(),
}


def reply_type(verb: str) -> Any:
    endpoint = next(e for e in ENDPOINTS if e.verb == verb)
    return typing.get_type_hints(endpoint.handle)["return"]


# A plausible request per verb, beside those generated from its contract (which rarely name a real plan).
PLAUSIBLE = {
    "check": {"user_id": "usr_fz", "model": "gpt-4o", "thread_id": "th_1", "estimated_tokens": 100},
    "reserve": {"user_id": "usr_fz", "thread_id": "th_1", "estimated_tokens": 100, "ttl_seconds": 60},
    "release": {"reservation_id": "rsv_0123456789abcdef"},
    "status": {"user_id": "usr_fz"},
    "checkout": {"user_id": "usr_fz", "plan": "pro", "success_url": "https://example.com/ok"},
    "portal": {"user_id": "usr_fz", "return_url": "https://example.com/back"},
    "usage": {"user_id": "usr_fz", "from": "2026-10-01", "to": "2026-11-01", "group_by": ["day"], "limit": 5},
}


def rpc_requests(verb: str, request_model: Any) -> list[bytes]:
    """Random JSON, requests built from the verb's contract with hostile fields, and raw junk."""
    valid = fuzz.examples(from_schema(request_model.model_json_schema()), 4) + [PLAUSIBLE.get(verb, {})] * 4
    names = [f.alias or name for name, f in request_model.model_fields.items()]
    own = {k: HOSTILE_FIELDS.get(k, fuzz.JSON) for k in names}
    near = fuzz.examples(st.sampled_from(valid).flatmap(lambda v: fuzz.near_valid(v, own)), RPC_PER_VERB)
    return [fuzz.json_bytes(v) for v in fuzz.examples(fuzz.JSON, RPC_PER_VERB) + near] + RAW_JUNK


async def ask(nc: nats.NATS, subject: str, data: bytes, sem: asyncio.Semaphore) -> tuple[float, Any]:
    async with sem:
        t0 = time.monotonic()
        try:
            msg = await nc.request(subject, data, timeout=RPC_TIMEOUT)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            return time.monotonic() - t0, type(exc).__name__
        try:
            return time.monotonic() - t0, json.loads(msg.data)
        except ValueError:
            return time.monotonic() - t0, msg.data[:200]


def usage_junk(tag: str) -> list[tuple[str, bytes]]:
    """(Nats-Msg-Id, body): random JSON, hostile usage events, raw junk."""
    valid = {"event_id": "ev", "user_id": "usr_fz", "thread_id": "th", "model": "gpt-4o", "input_tokens": 1,
             "output_tokens": 1, "occurred_at": "2026-10-01T12:00:00Z"}
    near = fuzz.examples(fuzz.near_valid(valid, HOSTILE_FIELDS), USAGE_JUNK)
    bodies = [fuzz.json_bytes(v) for v in fuzz.examples(fuzz.JSON, USAGE_JUNK) + near] + RAW_JUNK
    return [(f"junk-{tag}-{i}", body) for i, body in enumerate(bodies)]


def contract_valid(body: bytes) -> UsageEvent | None:
    try:
        return UsageEvent.model_validate_json(body)
    except ValidationError:
        return None


@dataclass
class RpcVerdict:
    late: list[tuple]  # no answer within RPC_TIMEOUT
    malformed: list[tuple]  # neither the verb's reply nor {"error": {"code", "message"}}
    internal: list[tuple]  # answered, but `internal`: a fault in billing rather than in the request
    codes: Counter  # (verb, "ok" or error code) -> how many


def judge_answers(sent: list[tuple[str, bytes]], answers: list[tuple[float, Any]]) -> RpcVerdict:
    verdict = RpcVerdict([], [], [], Counter())
    for (verb, data), (took, answer) in zip(sent, answers):
        if isinstance(answer, str) or took > RPC_TIMEOUT:
            verdict.late.append((verb, data[:200], answer, round(took, 2)))
        elif not isinstance(answer, dict):
            verdict.malformed.append((verb, data[:200], answer))
        elif "error" in answer:
            err = answer["error"]
            if not (isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("message"), str)):
                verdict.malformed.append((verb, data[:200], answer))
            elif err["code"] == "internal":
                verdict.internal.append((verb, data[:300]))
            verdict.codes[(verb, err.get("code") if isinstance(err, dict) else None)] += 1
        else:
            try:
                reply_type(verb).model_validate(answer)
                verdict.codes[(verb, "ok")] += 1
            except ValidationError as exc:
                verdict.malformed.append((verb, data[:200], str(exc)[:300]))
    return verdict


async def usage_settled(db: asyncpg.Connection, junk: list[tuple[str, bytes]], good: UsageEvent
                        ) -> tuple[dict[str, str], list[tuple[str, bytes]], bool]:
    """(dead letters by message id with their reason, junk neither dead-lettered nor recorded, whether `good` was
    recorded), once nothing is missing or at the deadline. Junk that is a valid event may be recorded instead."""
    ids = [m for m, _ in junk]
    deadline = time.monotonic() + 30
    while True:
        dead = {r["msg_id"]: r["reason"] for r in await db.fetch(
            "SELECT msg_id, reason FROM dead_letters WHERE msg_id = ANY($1)", ids)}
        recorded = {r["event_id"] for r in await db.fetch("SELECT event_id FROM usage_events")}
        lost = [(m, body[:200]) for m, body in junk
                if m not in dead and not ((ev := contract_valid(body)) and ev.event_id in recorded)]
        if (not lost and good.event_id in recorded) or time.monotonic() > deadline:
            return dead, lost, good.event_id in recorded
        await asyncio.sleep(0.25)


async def test_junk_to_every_billing_rpc_is_answered_in_time_and_junk_usage_is_dead_lettered(
    usage: tuple, servers: Servers, database_url: str, tmp_path: Path, output_dir: Path
) -> None:
    emulator, env, _client, db = usage
    await reset_webhook_consumer(servers.nats_url)
    billing = start_billing(stack_env(servers.nats_url, database_url, POLAR_ACCESS_TOKEN=TOKEN,
                                      POLAR_SERVER=emulator.url), tmp_path)
    start_usage_sync(env, tmp_path / "usage-sync")
    nc = await nats.connect(servers.nats_url)
    tag = uuid.uuid4().hex[:6]
    try:
        verbs = {e.verb: e.request for e in ENDPOINTS}
        assert {"check", "reserve", "release", "status", "checkout", "portal"} <= set(verbs)
        sent = [(verb, data) for verb, model in verbs.items() for data in rpc_requests(verb, model)]
        sem = asyncio.Semaphore(8)
        t0 = time.monotonic()
        answers = await asyncio.gather(*(ask(nc, f"billing.rpc.{verb}", data, sem) for verb, data in sent))
        rpc_took = time.monotonic() - t0
        verdict = judge_answers(sent, answers)

        js = nc.jetstream()
        junk = usage_junk(tag)
        for msg_id, body in junk:
            await js.publish("usage.event.x", body, stream="USAGE", headers={"Nats-Msg-Id": msg_id})
        good = UsageEvent(event_id=f"ev-after-junk-{tag}", user_id="usr_fz", thread_id="th", model="gpt-4o",
                          input_tokens=3, output_tokens=4, occurred_at=datetime.now(UTC))
        await js.publish("usage.event.usr_fz", good.model_dump_json().encode(), stream="USAGE",
                         headers={"Nats-Msg-Id": good.event_id})
        dead, lost, good_recorded = await usage_settled(db, junk, good)

        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, limits=HTTP_LIMITS) as http:
            ready = (await http.get(f"{billing.url}/readyz")).status_code
        alive = billing.proc.poll() is None
    finally:
        await nc.close()
        billing.stop_or_kill(15)

    no_reason = [m for m, reason in dead.items() if not (reason or "").strip()]
    valid_but_dead = Counter(kind_of(dead[m])[:80] for m, body in junk if m in dead and contract_valid(body))
    print(f"\nrpc: {len(sent)} requests over {len(verbs)} verbs in {rpc_took:.1f}s, answers {dict(verdict.codes)}; "
          f"usage junk: {len(junk)}, dead-lettered {len(dead)} (of them contract-valid: {dict(valid_but_dead)}), "
          f"recorded {len(junk) - len(dead)}")
    write_findings(output_dir, [{"late": verdict.late}, {"malformed": verdict.malformed},
                                {"internal": verdict.internal}, {"usage_lost": lost}, {"no_reason": no_reason}])
    assert not verdict.late, f"{len(verdict.late)} RPCs not answered within {RPC_TIMEOUT}s: {verdict.late[:5]}"
    assert not verdict.malformed, f"RPC answers neither a reply nor an error: {verdict.malformed[:5]}"
    assert alive and ready == 200, (alive, ready, log_lines(billing, '"level": "error"', 5))
    assert good_recorded, "the valid usage event published after the junk was not recorded"
    assert not lost, f"{len(lost)} junk usage messages neither dead-lettered nor recorded: {lost[:5]}"
    assert not no_reason, f"dead letters without a reason: {no_reason[:5]}"
