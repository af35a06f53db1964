"""polar-billing: the operator's commands, grouped by what the operator is doing.

    polar-billing webhooks failed                        webhooks given up on, with their error
    polar-billing webhooks replay <id>… | --failed       re-apply logged webhooks (never regresses newer state)
    polar-billing usage lag                              events waiting for Polar, and the oldest one's age
    polar-billing usage quarantined                      events Polar refused, with its reason
    polar-billing usage resend --all | <event-id>…       put quarantined events back in the outbox (after a fix)
    polar-billing dead-letters list [--source S]         messages every consumer gave up on, with the reason
    polar-billing dead-letters replay <id>…              put dead letters back on their subject
    polar-billing users show <user-id>                   plan, limits and recent usage, as the chat service sees them
    polar-billing reconcile status                       the last sweeps and the webhook endpoint's health
    polar-billing reconcile run [--backfill]             billing compares with Polar now and repairs drift
    polar-billing reconcile repairs                      what reconciliation changed: before, after, why
    polar-billing reconcile drifts                       users whose Polar meter differs from our ledger
    polar-billing emulator …                             drive the Polar emulator (see `emulator --help`)

Tables by default, `--json` for scripts. Exit codes: 0 done, 1 something named failed, 2 bad arguments,
3 NATS or PostgreSQL unreachable or not configured, 4 not found.
Where to connect: NATS_URL and DATABASE_URL from the environment or .env; after `make run`, from the file it writes
(.data/stack.env), so the commands work in a second terminal as they are.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import nats
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
OK, FAILED, USAGE, UNREACHABLE, NOT_FOUND = 0, 1, 2, 3, 4


class Unreachable(Exception):
    pass


class OpsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    nats_url: str | None = None
    database_url: str | None = None
    polar_pro_product_id: str | None = None
    polar_team_product_id: str | None = None


def stack_env() -> dict[str, str]:
    """What `make run` wrote about the stack it started (its embedded servers' URLs), if it is running."""
    path = Path(os.environ.get("STACK_DATA_DIR", ROOT / ".data")) / "stack.env"
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def settings() -> OpsSettings:
    for key, value in stack_env().items():
        os.environ.setdefault(key, value)
    return OpsSettings()


# --- output -------------------------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return "" if value is None else str(value)


def show(rows: Sequence[dict[str, Any]], columns: Sequence[str], as_json: bool, empty: str) -> None:
    if as_json:
        print(json.dumps([{c: r.get(c) for c in columns} for r in rows], default=_cell, ensure_ascii=False))
        return
    if not rows:
        print(empty)
        return
    cells = [[_cell(r.get(c)).replace("\n", " ")[:120] for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def say(data: dict[str, Any], as_json: bool, text: str) -> None:
    print(json.dumps(data, default=_cell, ensure_ascii=False) if as_json else text)


# --- connections --------------------------------------------------------------------------------------------------
async def database(s: OpsSettings) -> asyncpg.Connection:
    if not s.database_url:
        raise Unreachable("DATABASE_URL is not set (and no `make run` stack is running)")
    from shared.db import connect

    try:
        return await asyncio.wait_for(connect(s.database_url), 5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise Unreachable(f"PostgreSQL unreachable: {type(exc).__name__}") from None


async def broker(s: OpsSettings) -> nats.NATS:
    if not s.nats_url:
        raise Unreachable("NATS_URL is not set (and no `make run` stack is running)")
    from shared import topology

    try:
        return await nats.connect(topology.servers(s.nats_url), name="polar-billing-cli", connect_timeout=3,
                                  max_reconnect_attempts=1, allow_reconnect=False)
    except Exception as exc:  # noqa: BLE001 - nats-py raises several kinds for "cannot connect"
        raise Unreachable(f"NATS unreachable: {type(exc).__name__}") from None


# --- commands -----------------------------------------------------------------------------------------------------
async def webhooks_failed(s: OpsSettings, a: argparse.Namespace) -> int:
    from billing import repository as repo

    conn = await database(s)
    try:
        rows = [dict(r) for r in await repo.failed_webhooks(conn, a.limit)]
    finally:
        await conn.close()
    show(rows, ("webhook_id", "type", "attempts", "received_at", "error"), a.json, "no failed webhooks")
    return OK


async def webhooks_replay(s: OpsSettings, a: argparse.Namespace) -> int:
    from billing.cli import replay

    from shared.plans import PlanCatalog

    conn, nc = await database(s), await broker(s)
    try:
        done = await replay(conn, nc.jetstream(), PlanCatalog(s.polar_pro_product_id, s.polar_team_product_id),
                            a.webhook_ids, failed=a.failed)
    finally:
        await nc.drain()
        await conn.close()
    show([vars(d) for d in done], ("webhook_id", "outcome", "detail"), a.json, "nothing to replay")
    if any(d.outcome == "failed" for d in done):
        return FAILED
    return NOT_FOUND if any(d.outcome == "missing" for d in done) else OK


async def usage_lag(s: OpsSettings, a: argparse.Namespace) -> int:
    from usage_sync import repository as repo

    conn = await database(s)
    try:
        n, age = await repo.outbox_lag(conn)
    finally:
        await conn.close()
    say({"pending": n, "oldest_seconds": round(age, 1)}, a.json, f"{n} pending, oldest {age:.1f}s")
    return OK


async def usage_quarantined(s: OpsSettings, a: argparse.Namespace) -> int:
    from usage_sync import repository as repo

    conn = await database(s)
    try:
        rows = [dict(r) for r in await repo.list_quarantined(conn)]
    finally:
        await conn.close()
    show(rows, ("event_id", "user_id", "sync_error"), a.json, "no quarantined events")
    return OK


async def usage_resend(s: OpsSettings, a: argparse.Namespace) -> int:
    from usage_sync import repository as repo

    conn = await database(s)
    try:
        n = await repo.requeue_quarantined(conn, None if a.all else a.event_ids)
    finally:
        await conn.close()
    say({"requeued": n}, a.json, f"{n} event(s) back in the outbox")
    return OK if n or a.all else NOT_FOUND


async def dead_letters_list(s: OpsSettings, a: argparse.Namespace) -> int:
    from shared.db import repository as repo

    conn = await database(s)
    try:
        rows = [dict(r) for r in await repo.list_dead_letters(conn, a.source, a.limit)]
    finally:
        await conn.close()
    show(rows, ("id", "source", "subject", "msg_id", "deliveries", "created_at", "replayed_at", "reason"), a.json,
         "no dead letters")
    return OK


async def dead_letters_replay(s: OpsSettings, a: argparse.Namespace) -> int:
    """The original bytes and headers, back on the original subject with a new message id (the original id is inside
    the stream's duplicate window), so the consumer takes it again; its own dedup (webhook-id, event id) holds."""
    from shared.db import repository as repo
    from shared.messaging.publish import publish

    conn, nc = await database(s), await broker(s)
    results, code = [], OK
    try:
        js = nc.jetstream()
        for dl_id in a.ids:
            row = await repo.get_dead_letter(conn, dl_id)
            if row is None:
                results.append({"id": dl_id, "outcome": "not found"})
                code = max(code, NOT_FOUND)
                continue
            stream = await js.find_stream_name_by_subject(row["subject"])
            headers = {k: v for k, v in (row["headers"] or {}).items() if not k.startswith("Nats-")}
            await publish(js, row["subject"], bytes(row["payload"] or b""), stream=stream, headers=headers,
                          msg_id=f"replay:{dl_id}:{row['msg_id'] or row['stream_seq']}")
            await repo.mark_dead_letter_replayed(conn, dl_id)
            results.append({"id": dl_id, "outcome": "replayed", "subject": row["subject"]})
    finally:
        await nc.drain()
        await conn.close()
    show(results, ("id", "outcome", "subject"), a.json, "nothing replayed")
    return code


async def users_show(s: OpsSettings, a: argparse.Namespace) -> int:
    from polar_billing_client import BillingClient
    from usage_sync import repository as repo

    nc = await broker(s)
    client = BillingClient(nc, timeout=5)
    try:
        status = await client.status(a.user_id)
    finally:
        await nc.drain()
    conn = await database(s)
    try:
        recent = [dict(r) for r in await repo.recent_events(conn, a.user_id, a.recent)]
    finally:
        await conn.close()
    if a.json:
        print(json.dumps({"user_id": a.user_id, "status": status.model_dump(mode="json"), "recent_usage": recent},
                         default=_cell, ensure_ascii=False))
        return OK
    period = f"{_cell(status.current_period_start)} to {_cell(status.current_period_end)}" \
        if status.current_period_end else "calendar month"
    print(f"user      {a.user_id}\nplan      {status.plan} ({status.status or 'no subscription'}), period {period}"
          + (", cancels at period end" if status.cancel_at_period_end else ""))
    print(f"credits   {status.credits.used} of {status.credits.granted} used")
    show([{"limit": k, "used": v.used, "of": "unlimited" if v.limit is None else v.limit, "resets": v.resets_at}
          for k, v in status.limits.items()], ("limit", "used", "of", "resets"), False, "")
    print()
    show(recent, ("occurred_at", "model", "thread_id", "input_tokens", "output_tokens", "billable_tokens",
                  "sync_status"), False, "no usage recorded")
    return OK


def emulator(argv: list[str]) -> int:
    from polar_emulator import cli

    os.environ.setdefault("EMULATOR_URL", stack_env().get("EMULATOR_URL", "http://127.0.0.1:9000"))
    return cli.main(argv, prog="polar-billing emulator")


# --- the command tree ---------------------------------------------------------------------------------------------
Command = Callable[[OpsSettings, argparse.Namespace], Awaitable[int]]


async def reconcile_status(s: OpsSettings, a: argparse.Namespace) -> int:
    from billing import repository as repo

    conn = await database(s)
    try:
        sweeps = [dict(r) for r in await repo.last_sweeps(conn, a.limit)]
        health = await repo.endpoint_health(conn)
    finally:
        await conn.close()
    if a.json:
        print(json.dumps({"sweeps": sweeps, "webhook_endpoint": dict(health) if health else None}, default=str))
        return OK
    show(sweeps, ("id", "kind", "started_at", "finished_at", "compared", "drifts", "repairs", "error"), False,
         "no sweep yet (is billing running with POLAR_ACCESS_TOKEN set?)")
    if health:
        print(f"webhook endpoint {health['endpoint_id']}: {'enabled' if health['enabled'] else 'DISABLED'}, "
              f"last healthy {_cell(health['last_healthy_at'])}, checked {_cell(health['checked_at'])}: "
              f"{health['note'] or ''}")
    return OK


async def reconcile_run(s: OpsSettings, a: argparse.Namespace) -> int:
    from billing.reconcile import OPS_SUBJECT

    nc = await broker(s)
    try:
        msg = await nc.request(OPS_SUBJECT, b"backfill" if a.backfill else b"sweep", timeout=a.timeout)
    except nats.errors.NoRespondersError:
        print("polar-billing: no billing process is running", file=sys.stderr)
        return UNREACHABLE
    except nats.errors.TimeoutError:
        print(f"polar-billing: no answer within {a.timeout:.0f} s (the sweep may still be running)", file=sys.stderr)
        return FAILED
    finally:
        await nc.close()
    result = json.loads(msg.data)
    say(result, a.json, f"error: {result['error']}" if "error" in result else
        f"{result['kind']}: compared {result['compared']}, drifts {result['drifts']} {result['drift_fields']}, "
        f"repairs {result['repairs']}, webhooks redelivered {result['redelivered']}, meter drifts "
        f"{result['meter_drifts']}, webhook endpoint {result['endpoint']}")
    return FAILED if "error" in result else OK


async def reconcile_repairs(s: OpsSettings, a: argparse.Namespace) -> int:
    from billing import repository as repo

    conn = await database(s)
    try:
        rows = [dict(r) for r in await repo.recent_repairs(conn, a.limit)]
    finally:
        await conn.close()
    show(rows, ("id", "repaired_at", "source", "object", "object_id", "user_id", "fields", "before", "after"),
         a.json, "no repairs")
    return OK


async def reconcile_drifts(s: OpsSettings, a: argparse.Namespace) -> int:
    from billing import repository as repo

    conn = await database(s)
    try:
        rows = [dict(r) for r in await repo.meter_drifts(conn, a.limit)]
    finally:
        await conn.close()
    show(rows, ("user_id", "period_start", "ledger_tokens", "polar_tokens", "pending_tokens", "found_at"), a.json,
         "no meter drift")
    return OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polar-billing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = p.add_subparsers(dest="group", required=True, metavar="{webhooks,usage,dead-letters,users,reconcile,emulator}")

    def command(group: argparse._SubParsersAction, name: str, fn: Command, help: str) -> argparse.ArgumentParser:
        c = group.add_parser(name, help=help, description=help)
        c.add_argument("--json", action="store_true", help="one JSON document on stdout")
        c.set_defaults(fn=fn)
        return c

    w = groups.add_parser("webhooks", help="Polar webhooks billing could not apply").add_subparsers(
        dest="command", required=True)
    command(w, "failed", webhooks_failed, "webhooks given up on, with their error").add_argument(
        "--limit", type=int, default=100)
    r = command(w, "replay", webhooks_replay, "re-apply logged webhooks (monotonic: never regresses newer state)")
    r.add_argument("webhook_ids", nargs="*")
    r.add_argument("--failed", action="store_true", help="every webhook whose log row says failed")

    u = groups.add_parser("usage", help="usage on its way to Polar").add_subparsers(dest="command", required=True)
    command(u, "lag", usage_lag, "events waiting for Polar, and the oldest one's age")
    command(u, "quarantined", usage_quarantined, "events Polar refused, with its reason")
    rs = command(u, "resend", usage_resend, "put quarantined events back in the outbox (after the fix)")
    rs.add_argument("event_ids", nargs="*")
    rs.add_argument("--all", action="store_true", help="every quarantined event")

    d = groups.add_parser("dead-letters", help="messages a consumer gave up on").add_subparsers(
        dest="command", required=True)
    ls = command(d, "list", dead_letters_list, "dead letters of every consumer, newest first, with the reason")
    ls.add_argument("--source", help="one consumer: billing or usage-sync")
    ls.add_argument("--limit", type=int, default=50)
    command(d, "replay", dead_letters_replay, "put dead letters back on their subject").add_argument(
        "ids", nargs="+", type=int)

    us = groups.add_parser("users", help="one user as the chat service sees them").add_subparsers(
        dest="command", required=True)
    sh = command(us, "show", users_show, "plan, subscription, limits and recent usage of one user")
    sh.add_argument("user_id")
    sh.add_argument("--recent", type=int, default=10, help="how many recent usage events (10)")

    rc = groups.add_parser("reconcile", help="billing's state against Polar's").add_subparsers(
        dest="command", required=True)
    command(rc, "status", reconcile_status, "the last sweeps and the webhook endpoint's health").add_argument(
        "--limit", type=int, default=10)
    run = command(rc, "run", reconcile_run, "ask billing to compare with Polar now and repair drift")
    run.add_argument("--backfill", action="store_true", help="import every customer and subscription first")
    run.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the result (600)")
    command(rc, "repairs", reconcile_repairs, "what reconciliation changed, newest first").add_argument(
        "--limit", type=int, default=50)
    command(rc, "drifts", reconcile_drifts, "users whose Polar meter differs from our ledger").add_argument(
        "--limit", type=int, default=100)

    groups.add_parser("emulator", help="drive the Polar emulator (make run starts it without POLAR_ACCESS_TOKEN)",
                      add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["emulator"]:
        return emulator(argv[1:])
    p = parser()
    a = p.parse_args(argv)
    if a.group == "webhooks" and a.command == "replay" and not (a.webhook_ids or a.failed):
        p.error("name webhook ids or pass --failed")
    if a.group == "usage" and a.command == "resend" and not (a.all or a.event_ids):
        p.error("name event ids or pass --all")
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        return asyncio.run(a.fn(settings(), a))
    except Unreachable as exc:
        print(f"polar-billing: {exc}", file=sys.stderr)
        return UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
