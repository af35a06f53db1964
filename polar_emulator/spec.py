"""Facts the emulator reads from Polar's OpenAPI document (openapi/2026-10.openapi.json) instead of restating them:
the webhook event types, the subscription statuses, and the scopes each operation documents."""
from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

SPEC_PATH = Path(__file__).parent / "openapi" / "2026-10.openapi.json"


@cache
def spec() -> dict[str, Any]:
    return json.loads(SPEC_PATH.read_text())


def enum(schema: str) -> tuple[str, ...]:
    return tuple(spec()["components"]["schemas"][schema]["enum"])


def webhook_event_types() -> tuple[str, ...]:
    return enum("WebhookEventType")


def subscription_statuses() -> tuple[str, ...]:
    return enum("SubscriptionStatus")


def _template(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


@cache
def scopes_for(path: str, method: str) -> frozenset[str]:
    """The scopes an operation's description lists ("**Scopes**: `a:read` `a:write`"); any one of them grants it.
    Path parameters may be named differently from the document's (`{meter_id}` vs `{id}`)."""
    wanted = _template(path)
    for p, ops in spec()["paths"].items():
        if _template(p) == wanted and method.lower() in ops:
            text = ops[method.lower()].get("description", "")
            line = text[text.find("**Scopes**"):] if "**Scopes**" in text else ""
            return frozenset(re.findall(r"`([a-z_]+:[a-z_]+)`", line))
    raise KeyError(f"{method} {path} is not in Polar's OpenAPI document")
