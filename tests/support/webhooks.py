"""Signed Polar webhooks, as Polar sends them (Standard Webhooks headers over the raw body)."""
from __future__ import annotations

import copy
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook

# Polar's example payloads (shared/polar/webhook-examples), as the emulator keeps them: the repo is self-contained.
EXAMPLES = Path(__file__).resolve().parents[2] / "polar_emulator" / "payloads"
PRO_PRODUCT = "0f4c1a52-6d0e-4a3a-9f1b-2b6f3c7a9d10"  # the product the examples' customer buys


def example(event_type: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"{event_type}.json").read_text())


def all_examples() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("*.json"))}


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def sign(secret: str, body: bytes, webhook_id: str | None = None, ts: float | None = None,
         scheme: str = "standard") -> dict[str, str]:
    """Headers for `body`. scheme: standard (key = base64 after whsec_) or legacy (key = UTF-8 of the secret)."""
    webhook_id = webhook_id or f"wh_{uuid.uuid4().hex}"
    ts = time.time() if ts is None else ts
    key = Webhook(secret) if scheme == "standard" else Webhook(secret.encode())
    signature = key.sign(webhook_id, datetime.fromtimestamp(ts, UTC), body.decode())
    return {"webhook-id": webhook_id, "webhook-timestamp": str(int(ts)), "webhook-signature": signature,
            "content-type": "application/json", "user-agent": "polar.sh webhooks"}


def retarget(payload: dict[str, Any], suffix: str) -> dict[str, Any]:
    """A copy of an example about other objects: ids and the user id get `suffix`, so tests do not collide."""
    text = json.dumps(payload)
    for old in ("usr_1337", "3e5f7a9b-1c2d-4e6f-8a0b-2c4d6e8f0a1b", "992fae2a-2a17-4b7a-8d9e-e287cf90131b",
                "c1d2e3f4-a5b6-4c7d-9e8f-0a1b2c3d4e5f", "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d",
                "f3a4b5c6-d7e8-4f9a-b0c1-d2e3f4a5b6c7"):
        text = text.replace(old, f"{old}-{suffix}")
    return copy.deepcopy(json.loads(text))
