"""Where a webhook enters: POST /webhooks/polar. Verify, publish once to JetStream, and answer Polar only after the
broker stored it.

No parsing beyond the envelope `type`: a signed event of an unknown type or a drifted schema is still stored and
answered 2xx, so schema drift can never get the endpoint disabled (docs/polar.md §5, §6).
"""
from __future__ import annotations

import json
import logging
import re
import time

from prometheus_client import Counter, Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared import topology
from shared.messaging.publish import publish

from .runtime import IngressRuntime
from .signatures import verify

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
PUBLISH_TIMEOUT = 4.0  # the whole answer stays under 5 s when the broker is gone, so Polar retries
_TYPE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")
REQUIRED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")

WEBHOOKS = Counter("ingress_webhooks_total", "Webhooks received, by outcome", ["outcome"])
PUBLISH_SECONDS = Histogram("ingress_webhook_publish_seconds", "Time from request to JetStream ack")
STORED, DUPLICATE = WEBHOOKS.labels("stored"), WEBHOOKS.labels("duplicate")
# The two answers Polar gets on success, made once.
ANSWERS = {False: b'{"stored":true,"duplicate":false}', True: b'{"stored":true,"duplicate":true}'}


def _problem(status: int, outcome: str, detail: str, webhook_id: str | None = None) -> JSONResponse:
    WEBHOOKS.labels(outcome).inc()
    log.warning("webhook.rejected", extra={"status": status, "reason": detail, "webhook_id": webhook_id})
    return JSONResponse({"detail": detail}, status_code=status)


async def _read_body(request: Request) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        return None if int(declared) > MAX_BODY else await request.body()  # the server stops at the declared size
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def receive(request: Request) -> Response:
    rt: IngressRuntime = request.app.state.rt
    body = await _read_body(request)
    if body is None:
        return _problem(413, "too_large", f"body over {MAX_BODY} bytes")
    headers = {k.lower(): v for k, v in request.headers.items()}
    missing = [h for h in REQUIRED_HEADERS if not headers.get(h)]
    if missing:
        return _problem(400, "bad_headers", f"missing header(s): {', '.join(missing)}")
    webhook_id = headers["webhook-id"]
    if len(webhook_id) > 256:
        return _problem(400, "bad_headers", "webhook-id too long")
    failure = verify(rt.signing_keys, body, headers)
    if failure:
        return _problem(403, "bad_signature", f"signature verification failed: {failure}", webhook_id)
    try:
        envelope = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _problem(400, "not_json", "body is not JSON", webhook_id)
    event_type = envelope.get("type") if isinstance(envelope, dict) else None
    if not isinstance(event_type, str) or not event_type:
        return _problem(400, "no_type", "body has no event type", webhook_id)
    if not _TYPE.match(event_type) or len(event_type) > 100:
        return _problem(400, "bad_type", "event type is not of the form word.word", webhook_id)

    t0 = time.perf_counter()
    try:
        # The PubAck is what we answer on (docs/nats.md §7); the webhook-id is the message id, so Polar's retries
        # of one event are stored once. The publish's own timeout bounds the wait, also while NATS is away.
        ack = await publish(rt.js, topology.webhook_subject(event_type), body, msg_id=webhook_id,
                            stream=topology.POLAR_WEBHOOKS.name, timeout=PUBLISH_TIMEOUT,
                            headers={"webhook-id": webhook_id, "webhook-timestamp": headers["webhook-timestamp"]})
    except Exception as exc:  # noqa: BLE001 - broker gone, slow, or refusing: Polar must retry
        WEBHOOKS.labels("broker_unavailable").inc()
        log.error("webhook.publish_failed", extra={"webhook_id": webhook_id, "type": event_type,
                                                   "error": type(exc).__name__})
        return JSONResponse({"detail": "temporarily unavailable, retry"}, status_code=503,
                            headers={"Retry-After": "5"})
    PUBLISH_SECONDS.observe(time.perf_counter() - t0)
    duplicate = bool(ack.duplicate)
    (DUPLICATE if duplicate else STORED).inc()
    log.info("webhook.stored", extra={"webhook_id": webhook_id, "type": event_type, "seq": ack.seq,
                                      "duplicate": duplicate})
    return Response(ANSWERS[duplicate], status_code=202, media_type="application/json")
