"""The operator's billing commands.

    python -m billing.cli replay <webhook-id> [<webhook-id> ...]   re-apply logged webhooks (monotonic: never regresses)
    python -m billing.cli replay --failed                          re-run every webhook whose log row says `failed`
"""
from __future__ import annotations

import argparse
import asyncio
import sys

import nats

from shared import topology
from shared.db import connect
from shared.logs import setup_logging
from shared.messaging import outbox as outbox_loop
from shared.plans import PlanCatalog
from shared.settings import load_settings

from . import repository as repo
from .apply_webhook import apply_webhook
from .outbox import BILLING_EVENTS
from .polar_models import Webhook
from .settings import BillingSettings


async def replay(settings: BillingSettings, ids: list[str], failed: bool) -> int:
    catalog = PlanCatalog(settings.polar_pro_product_id, settings.polar_team_product_id)
    conn = await connect(settings.database_url)
    nc = await nats.connect(topology.servers(settings.nats_url), name="billing-cli")
    errors = 0
    try:
        if failed:
            ids = ids + await repo.failed_webhook_ids(conn)
        for webhook_id in ids:
            row = await repo.get_webhook(conn, webhook_id)
            if row is None or row["payload"] is None:
                print(f"{webhook_id}: not in the webhook log (or its payload is past retention)")
                errors += 1
                continue
            try:
                outcome = await apply_webhook(conn, catalog, Webhook.parse(webhook_id, row["payload"]), replay=True)
                await outbox_loop.flush(BILLING_EVENTS, conn, nc.jetstream())
                print(f"{webhook_id}: {outcome.status}" + (f" ({outcome.note})" if outcome.note else ""))
            except Exception as exc:  # noqa: BLE001 - reported per id, the others still run
                await repo.record_failure(conn, webhook_id, row["type"], row["payload"], f"{type(exc).__name__}: {exc}",
                                          row["attempts"] + 1)
                print(f"{webhook_id}: failed: {type(exc).__name__}: {exc}")
                errors += 1
    finally:
        await nc.drain()
        await conn.close()
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m billing.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="re-apply logged webhooks")
    rp.add_argument("webhook_ids", nargs="*")
    rp.add_argument("--failed", action="store_true", help="every webhook whose log row says failed")
    args = parser.parse_args(argv)
    if not args.webhook_ids and not args.failed:
        parser.error("name webhook ids or pass --failed")
    settings = load_settings(BillingSettings, "billing")
    setup_logging("billing-cli", "WARNING")
    return asyncio.run(replay(settings, args.webhook_ids, args.failed))


if __name__ == "__main__":
    sys.exit(main())
