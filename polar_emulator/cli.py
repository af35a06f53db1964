"""Drive a running emulator from a shell (talks to its admin API at EMULATOR_URL, default http://127.0.0.1:9000).

    python -m polar_emulator.cli purchase usr_1 [--plan pro|team]
    python -m polar_emulator.cli cancel|uncancel|revoke|renew|past-due|refund usr_1
    python -m polar_emulator.cli fault /v1/events/ingest 500|502|429|timeout|drop [--count N] [--retry-after S]
    python -m polar_emulator.cli latency 0.3
    python -m polar_emulator.cli reject-events --key model --value bad
    python -m polar_emulator.cli clear
    python -m polar_emulator.cli delivery [--copies 1-5] [--shuffle] [--concurrent] [--scheme standard|legacy]
    python -m polar_emulator.cli seed 300 [--prefix seed-] [--mix team=50,past_due=10,canceled=20] [--anonymous 3]
    python -m polar_emulator.cli drift usr_1 status=past_due product_id=<id> cancel_at_period_end=true revoke=true
    python -m polar_emulator.cli endpoint [--enable | --disable]
    python -m polar_emulator.cli events | webhooks | deliveries | rate-limit
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import httpx

from .config import PRO_PRODUCT_ID, TEAM_PRODUCT_ID


def main(argv: list[str] | None = None, prog: str = "python -m polar_emulator.cli") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.replace("python -m polar_emulator.cli", prog),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get("EMULATOR_URL", "http://127.0.0.1:9000"))
    sub = p.add_subparsers(dest="cmd", required=True)
    buy = sub.add_parser("purchase")
    buy.add_argument("user")
    buy.add_argument("--plan", choices=["pro", "team"], default="pro")
    for action in ("cancel", "uncancel", "revoke", "renew", "past-due", "refund"):
        sub.add_parser(action).add_argument("user")
    fault = sub.add_parser("fault")
    fault.add_argument("path")
    fault.add_argument("kind", choices=["500", "502", "429", "timeout", "drop", "hold"])
    fault.add_argument("--count", type=int, default=1)
    fault.add_argument("--retry-after", type=int, default=1)
    sub.add_parser("latency").add_argument("seconds", type=float)
    rule = sub.add_parser("reject-events")
    rule.add_argument("--key")
    rule.add_argument("--value", required=True)
    sub.add_parser("clear")
    d = sub.add_parser("delivery")
    d.add_argument("--copies", type=int, default=1)
    d.add_argument("--shuffle", action="store_true")
    d.add_argument("--concurrent", action="store_true")
    d.add_argument("--scheme", choices=["standard", "legacy"])
    seed = sub.add_parser("seed", help="customers and subscriptions, without webhooks")
    seed.add_argument("count", type=int)
    seed.add_argument("--prefix", default="seed-")
    seed.add_argument("--mix", default="", help="kind=count,…: team, trialing, canceling, past_due, canceled, "
                                                 "unpaid, incomplete (the rest: pro)")
    seed.add_argument("--anonymous", type=int, default=0, help="customers without an external id")
    drift = sub.add_parser("drift", help="change a subscription without a webhook")
    drift.add_argument("ref", help="subscription id or external customer id")
    drift.add_argument("changes", nargs="+", help="key=value (JSON values: true, null, numbers)")
    ep = sub.add_parser("endpoint", help="the webhook endpoint's state")
    ep.add_argument("--enable", dest="enabled", action="store_const", const=True)
    ep.add_argument("--disable", dest="enabled", action="store_const", const=False)
    for name in ("events", "webhooks", "deliveries", "rate-limit"):
        sub.add_parser(name)
    a = p.parse_args(argv)
    base = f"{a.url.rstrip('/')}/__emulator__"

    if a.cmd == "purchase":
        product = PRO_PRODUCT_ID if a.plan == "pro" else TEAM_PRODUCT_ID
        r = httpx.post(f"{base}/simulate/purchase", json={"external_customer_id": a.user, "product_id": product})
    elif a.cmd in ("cancel", "uncancel", "revoke", "renew", "past-due", "refund"):
        r = httpx.post(f"{base}/simulate/{a.cmd.replace('-', '_')}", json={"external_customer_id": a.user})
    elif a.cmd == "fault":
        r = httpx.post(f"{base}/faults", json={"path": a.path, "kind": a.kind, "count": a.count,
                                               "retry_after": a.retry_after})
    elif a.cmd == "latency":
        r = httpx.post(f"{base}/latency", json={"seconds": a.seconds})
    elif a.cmd == "reject-events":
        r = httpx.post(f"{base}/ingest-rules", json={"key": a.key, "value": a.value})
    elif a.cmd == "clear":
        r = httpx.delete(f"{base}/faults")
    elif a.cmd == "delivery":
        body = {"max_copies": a.copies, "shuffle": a.shuffle, "concurrent": a.concurrent}
        if a.scheme:
            body["scheme"] = a.scheme
        r = httpx.post(f"{base}/delivery", json=body)
    elif a.cmd == "seed":
        mix = {k: int(v) for k, v in (kv.split("=", 1) for kv in a.mix.split(",") if kv)}
        r = httpx.post(f"{base}/seed", json={"count": a.count, "prefix": a.prefix, "mix": mix,
                                             "without_external_id": a.anonymous}, timeout=60)
    elif a.cmd == "drift":
        changes = {}
        for kv in a.changes:
            key, _, value = kv.partition("=")
            try:
                changes[key] = json.loads(value)
            except ValueError:
                changes[key] = value
        r = httpx.patch(f"{base}/subscriptions/{a.ref}", json=changes)
    elif a.cmd == "endpoint" and a.enabled is not None:
        r = httpx.post(f"{base}/webhook-endpoint", json={"enabled": a.enabled})
    else:
        r = httpx.get(f"{base}/{'webhook-endpoint' if a.cmd == 'endpoint' else a.cmd}")
    print(json.dumps(r.json(), indent=2))
    return 0 if r.is_success else 1


if __name__ == "__main__":
    sys.exit(main())
