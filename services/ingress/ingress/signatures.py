"""Polar's webhook signatures (Standard Webhooks), checked with the standardwebhooks library. Pure: no I/O."""
from __future__ import annotations

import binascii

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


def signing_keys(secret: str) -> list[Webhook]:
    """Both of Polar's schemes: the legacy key is the UTF-8 bytes of the whole secret (prefix included); the Standard
    Webhooks key is the base64 after `whsec_`. A signature matching either is accepted (docs/polar.md §4)."""
    legacy = Webhook(secret.encode())
    try:
        return [Webhook(secret), legacy]  # first: every secret Polar generated since Sep 2026 signs this way
    except Exception:  # noqa: BLE001 - not base64 (a legacy secret): the legacy key alone
        return [legacy]


def verify(keys: list[Webhook], body: bytes, headers: dict[str, str]) -> str | None:
    """None when a key verifies the body; otherwise the reason, short and safe to return."""
    reason = "no matching signature"
    for key in keys:
        try:
            key.verify(body, headers, json_parse=False)
            return None
        except WebhookVerificationError as exc:
            reason = str(exc).lower()
            if "timestamp" in reason or "headers" in reason:
                return reason  # the same for every key
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return "malformed signature header"
    return reason
