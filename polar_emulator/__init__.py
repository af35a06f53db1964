"""A Polar of our own: Polar's wire format (2026-10) for the endpoints we use, its failure modes, signed webhooks.

The official polar-sdk talks to it exactly as to Polar (`PolarAsync(token, base_url=...)`). Tests and `make run`
use it; an integrator can use it to replay every failure Polar can produce against their own deployment.

Where things are:
- api.py: events ingest, checkouts, customer sessions, customers and subscriptions (lists, by id), meters;
  query.py: how lists page (limit capped at 100, max_page 0 when empty), filter and sort.
- webhooks_api.py: webhook endpoint list/get/patch, deliveries, redeliver; webhook_endpoints.py: the one endpoint,
  its events and deliveries, auto-disable; delivery.py: signing, sending, retries with Polar's backoff.
- middleware.py: API version, body size, auth, the fixed-window rate limit, injected faults; scopes.py: token scopes
  (403 insufficient_scope); spec.py: what is read from openapi/2026-10.openapi.json.
- lifecycle.py: customer lifecycles that emit Polar's webhooks; silent_changes.py: drift and bulk seeding without any.
- admin.py: the admin API under /__emulator__/ (cli.py drives it from a shell); state.py: the in-memory store.
"""
