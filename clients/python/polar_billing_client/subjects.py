"""The NATS names the chat service and the backend agree on. The backend's topology (shared/topology.py) builds its
streams from these, so the two cannot drift."""
from __future__ import annotations

import base64
import re

USAGE_STREAM = "USAGE"
USAGE_SUBJECT_PREFIX = "usage.event"  # usage.event.<user id>
RPC_PREFIX = "billing.rpc"  # billing.rpc.<verb>, core request/reply
BILLING_EVENT_PREFIX = "billing.event"  # billing.event.<kind>
BILLING_EVENTS_STREAM = "BILLING_EVENTS"
SUBSCRIPTION_CHANGED = f"{BILLING_EVENT_PREFIX}.subscription.changed"
USAGE_THRESHOLD = f"{BILLING_EVENT_PREFIX}.usage.threshold"


# A user id a subject can carry as it is; any other id is carried encoded (the JSON body keeps it as it is).
_PLAIN = re.compile(r"^[A-Za-z0-9_\-:@+=]{1,256}$")


def subject_token(user_id: str) -> str:
    """A NATS subject token for any user id: the id itself when it is made only of letters, digits and `_-:@+=`;
    otherwise `~` and the base64url of its UTF-8 bytes, unpadded (dots, `/`, spaces, `*`, `>` and non-ASCII cannot
    stand in a token). `~` never appears in a plain id, so the two forms cannot collide."""
    if _PLAIN.match(user_id):
        return user_id
    return "~" + base64.urlsafe_b64encode(user_id.encode()).rstrip(b"=").decode()


def usage_subject(user_id: str) -> str:
    return f"{USAGE_SUBJECT_PREFIX}.{subject_token(user_id)}"


def rpc_subject(verb: str) -> str:
    return f"{RPC_PREFIX}.{verb}"
