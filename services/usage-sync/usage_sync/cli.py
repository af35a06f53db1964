"""The operator's usage commands.

    python -m usage_sync.cli quarantined                 events Polar refused, with its reason
    python -m usage_sync.cli resend --all | <event-id>…  put quarantined events back in the outbox (after a fix)
    python -m usage_sync.cli lag                         how many events wait for Polar, and the oldest's age
"""
from __future__ import annotations

import argparse
import asyncio
import sys

from shared.db import connect
from shared.settings import load_settings

from . import repository as repo
from .settings import UsageSyncSettings


async def run(settings: UsageSyncSettings, args: argparse.Namespace) -> int:
    conn = await connect(settings.database_url)
    try:
        if args.command == "quarantined":
            rows = await repo.list_quarantined(conn)
            for r in rows:
                print(f"{r['event_id']}\t{r['user_id']}\t{r['sync_error']}")
            print(f"{len(rows)} quarantined")
        elif args.command == "resend":
            n = await repo.requeue_quarantined(conn, None if args.all else args.event_ids)
            print(f"{n} event(s) back in the outbox")
        else:
            n, age = await repo.outbox_lag(conn)
            print(f"{n} pending, oldest {age:.1f}s")
    finally:
        await conn.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m usage_sync.cli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("quarantined")
    r = sub.add_parser("resend")
    r.add_argument("event_ids", nargs="*")
    r.add_argument("--all", action="store_true")
    sub.add_parser("lag")
    args = p.parse_args(argv)
    if args.command == "resend" and not (args.all or args.event_ids):
        p.error("name event ids or pass --all")
    return asyncio.run(run(load_settings(UsageSyncSettings, "usage-sync"), args))


if __name__ == "__main__":
    sys.exit(main())
