"""Signed, short-lived links to the status page: `<base>/subscription/status?token=…`.

token = base64url(user_id) "." expiry (unix seconds) "." base64url(HMAC-SHA256(secret, "status:" user_id "." expiry))
No page takes a bare user id: a forged, altered or expired token gets a 403 that names no user.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import urlencode

DEFAULT_TTL = 15 * 60


class BadToken(Exception):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, user_id: str, expires: int) -> bytes:
    return hmac.new(secret.encode(), f"status:{user_id}.{expires}".encode(), hashlib.sha256).digest()


def sign(secret: str, user_id: str, ttl: int = DEFAULT_TTL, now: float | None = None) -> str:
    expires = int((now if now is not None else time.time()) + ttl)
    return f"{_b64(user_id.encode())}.{expires}.{_b64(_mac(secret, user_id, expires))}"


def verify(secret: str, token: str, now: float | None = None) -> str:
    """The user id the token was issued for; BadToken (with no detail for the page) otherwise."""
    try:
        user_part, expires_part, mac_part = token.split(".")
        user_id, expires = _unb64(user_part).decode(), int(expires_part)
        mac = _unb64(mac_part)
    except (ValueError, UnicodeDecodeError):
        raise BadToken("malformed") from None
    if not hmac.compare_digest(mac, _mac(secret, user_id, expires)):
        raise BadToken("signature")
    if expires < (now if now is not None else time.time()):
        raise BadToken("expired")
    return user_id


def status_page_url(base_url: str, secret: str, user_id: str, ttl: int = DEFAULT_TTL) -> str:
    return f"{base_url.rstrip('/')}/subscription/status?{urlencode({'token': sign(secret, user_id, ttl)})}"
