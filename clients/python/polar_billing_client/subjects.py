"""The NATS names the chat service and the backend agree on. The backend's topology (shared/topology.py) builds its
streams from these, so the two cannot drift."""
from __future__ import annotations

USAGE_STREAM = "USAGE"
USAGE_SUBJECT_PREFIX = "usage.event"  # usage.event.<user id>
RPC_PREFIX = "billing.rpc"  # billing.rpc.<verb>, core request/reply
BILLING_EVENT_PREFIX = "billing.event"  # billing.event.<kind>
BILLING_EVENTS_STREAM = "BILLING_EVENTS"
SUBSCRIPTION_CHANGED = f"{BILLING_EVENT_PREFIX}.subscription.changed"
USAGE_THRESHOLD = f"{BILLING_EVENT_PREFIX}.usage.threshold"


def usage_subject(user_id: str) -> str:
    return f"{USAGE_SUBJECT_PREFIX}.{user_id}"


def rpc_subject(verb: str) -> str:
    return f"{RPC_PREFIX}.{verb}"
