"""Drive a running emulator from a shell (talks to its admin API at EMULATOR_URL, default http://127.0.0.1:9000).

    python -m polar_emulator.cli purchase usr_1 [--plan pro|team]
    python -m polar_emulator.cli cancel|uncancel|revoke|renew|past-due|refund usr_1
    python -m polar_emulator.cli fault /v1/events/ingest 500|502|429|timeout|drop [--count N] [--retry-after S]
    python -m polar_emulator.cli latency 0.3
    python -m polar_emulator.cli reject-events --key model --value bad
    python -m polar_emulator.cli clear
    python -m polar_emulator.cli delivery [--copies 1-5] [--shuffle] [--concurrent] [--scheme standard|legacy]
    python -m polar_emulator.cli events | webhooks
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
    sub.add_parser("events")
    sub.add_parser("webhooks")
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
    else:
        r = httpx.get(f"{base}/{a.cmd}")
    print(json.dumps(r.json(), indent=2))
    return 0 if r.is_success else 1


if __name__ == "__main__":
    sys.exit(main())
