"""What Polar does before an endpoint runs: API version, body size, auth, rate limit; plus the injected faults."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .state import Store

SUPPORTED_VERSIONS = {"2026-04", "2026-10", "2027-01"}
MAX_BODY = 10 * 1024 * 1024
ADMIN_PREFIX = "/__emulator__"
FRONTEND_PREFIX = "/frontend"  # the pages a customer's browser visits: no API token, no API rules


class PolarEdge:
    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith((ADMIN_PREFIX, FRONTEND_PREFIX)):
            return await self.app(scope, receive, send)
        status_box: dict[str, int] = {}

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, send_logged)
        finally:
            self.store.requests.append((time.time(), scope["method"], scope["path"], status_box.get("status")))

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        version = headers.get("polar-version")
        if version is not None and version not in SUPPORTED_VERSIONS:
            return await _json(send, 404, {"detail": "Not Found"})
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get("content-length")
            if length is None:
                return await _json(send, 411, {"error": "LengthRequired", "detail": "Length Required"})
            if int(length) > MAX_BODY:
                return await _json(send, 413, {"error": "RequestBodyTooLarge", "detail": "Request body too large"})
        auth = headers.get("authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        if token != self.store.settings.access_token:
            return await _json(send, 401, {"error": "Unauthorized", "detail": "Unauthorized"})
        # Every /v1 path, the new ones included, shares the token's window (Polar's "^/v1" rule).
        wait = self.store.rate_limited(token)
        if wait is not None:  # as asgi-ratelimit answers for Polar: empty body, integer Retry-After
            self.store.throttled[scope["path"]] += 1
            return await _raw(send, 429, b"", [(b"retry-after", str(wait).encode())])
        if self.store.latency:
            await asyncio.sleep(self.store.latency)
        fault = next((f for f in self.store.faults if scope["path"].startswith(f.path) and f.remaining > 0), None)
        if fault is not None:
            fault.remaining -= 1
            if fault.kind in ("500", "502"):
                return await _raw(send, int(fault.kind), b"Internal Server Error" if fault.kind == "500"
                                  else b"Bad Gateway", [(b"content-type", b"text/plain")])
            if fault.kind == "429":
                self.store.injected_429[scope["path"]] += 1
                return await _raw(send, 429, b"", [(b"retry-after", str(fault.retry_after).encode())])
            if fault.kind == "timeout":
                await asyncio.sleep(fault.hang_seconds)
                return await _json(send, 504, {"detail": "Gateway Timeout"})
            if fault.kind == "hold":
                # Do the work, then hold the answer: the caller cannot know it succeeded (crash tests).
                held: list[Message] = []

                async def hold(message: Message) -> None:
                    held.append(message)

                await self.app(scope, receive, hold)
                await asyncio.sleep(fault.hang_seconds)
                for message in held:
                    await send(message)
                return
            if fault.kind == "drop":
                # Start a response, then break off: the client sees the connection drop mid-answer.
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")]})
                await send({"type": "http.response.body", "body": b"{", "more_body": True})
                raise ConnectionAbortedError("emulated dropped connection")
        headers_out: list[tuple[bytes, bytes]] = []

        async def send_versioned(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"polar-version", (version or "2026-04").encode()),
                                      *headers_out]
            await send(message)

        await self.app(scope, receive, send_versioned)


async def _raw(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    await _raw(send, status, json.dumps(payload).encode(), [(b"content-type", b"application/json")])
