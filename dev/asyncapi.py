"""docs/asyncapi.yaml from the code: payload schemas are pydantic's JSON Schema of polar_billing_client.contracts;
subjects, streams and durables come from polar_billing_client.subjects and shared.topology.
`python -m dev.asyncapi` writes the file; `python -m dev.asyncapi --check` exits 1 when the committed one differs."""
from __future__ import annotations

import inspect
import sys
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "asyncapi.yaml"
COMMAND = ".venv/bin/python -m dev.asyncapi"
if str(ROOT / "clients" / "python") not in sys.path:  # runnable without the Makefile's PYTHONPATH
    sys.path.insert(0, str(ROOT / "clients" / "python"))

import yaml
from polar_billing_client import contracts as c
from polar_billing_client.subjects import SUBSCRIPTION_CHANGED, USAGE_THRESHOLD, rpc_subject, usage_subject
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared import topology

# verb -> (request, reply); every verb may answer ErrorReply instead. tests/unit/test_asyncapi.py holds it to billing.rpc.
RPC: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "check": (c.CheckRequest, c.CheckReply), "reserve": (c.ReserveRequest, c.ReserveReply),
    "release": (c.ReleaseRequest, c.ReleaseReply), "status": (c.StatusRequest, c.StatusReply),
    "usage": (c.UsageQuery, c.UsageReport),
    "checkout": (c.CheckoutRequest, c.LinkReply), "portal": (c.PortalRequest, c.LinkReply),
}
CONTRACTS: list[type[BaseModel]] = list(dict.fromkeys(
    [c.UsageEvent, c.SubscriptionChanged, c.UsageThreshold, *(m for pair in RPC.values() for m in pair), c.ErrorReply]))
NOTES = {"UsageEvent": {  # field descriptions the contracts do not carry
    "event_id": "one per AI response, reused on retry",
    "user_id": "our user id = Polar external customer id; letters, digits and _-:@+= only (a subject token)",
    "custom_key": "the user's own API key paid; tokens are not billed",
    "occurred_at": "RFC 3339 with offset", "reservation_id": "the reservation this response settles"}}
# {stream}, {durable}, {queue}: filled in from shared.topology. "Internal." channels are tagged internal.
USAGE_TEXT = """JetStream stream {stream}. One message per AI response, published by the chat service after the response.
Header `Nats-Msg-Id: <event_id>` (required). Retry a publish that was not acked with the SAME event_id.
Consumed by usage-sync (durable `{durable}`): ledger, counters, then Polar's event ingestion.
"""
WEBHOOK_TEXT = """Internal. JetStream stream {stream}. A verified Polar webhook, its raw body unchanged, published by ingress
with `Nats-Msg-Id` = `webhook-id` (also in header `webhook-id`, with `webhook-timestamp`). Consumed by billing
(durable `{durable}`, several in flight: each user's changes serialize on a lock, and application is
monotonic).
"""
CHANGED_TEXT = """JetStream stream {stream}. A user's effective plan, subscription status or cancel-at-period-end changed.
Published by billing from its outbox, once per change (Nats-Msg-Id = webhook id, or `reconcile:<repair id>` when
reconciliation with Polar repaired it, + user id).
"""
THRESHOLD_TEXT = """JetStream stream {stream}. A user's usage crossed 80 % or 100 % of a limit in a period; once per
threshold per limit per period. Published by usage-sync from its outbox.
"""
RPC_TEXT = """Core NATS request/reply (queue group `{queue}`). The reply is {reply}, or ErrorReply
({{"error": {{"code", "message", ...}}}}) on any failure.
"""
DEAD_TEXT = """Internal. JetStream stream {stream}. A message a consumer could not take, its original body, with header
`x-dead-letter-reason`. Also a `dead_letters` row; billing also marks the webhook log row `failed`.
"""


def schemas() -> dict[str, Any]:
    _, top = models_json_schema([(m, "validation") for m in CONTRACTS], ref_template="#/components/schemas/{model}")
    defs: dict[str, Any] = top["$defs"]
    for name, schema in defs.items():
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)  # "Event Id" and the like: noise
        for field, note in NOTES.get(name, {}).items():
            schema["properties"][field]["description"] = note  # KeyError: a note on a field that is gone
    return dict(sorted(defs.items()))


def ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(path)}


def channel(subject: Callable[..., str] | str, text: str, messages: dict[str, str], *params: str,
            **fill: str) -> dict[str, Any]:
    """`subject` is a constant, or the code's own subject builder, called here with `{param}` placeholders."""
    names = list(inspect.signature(subject).parameters) if callable(subject) else []
    address = subject(*(f"{{{n}}}" for n in names)) if callable(subject) else subject
    stream = next((s.name for s in topology.STREAMS for p in s.subjects or () if address.startswith(p[:-1])), None)
    durable = next((d.name for d in topology.DURABLES if d.stream == stream), None)
    ch: dict[str, Any] = {"address": address, "description": text.format(stream=stream, durable=durable, **fill)}
    if names:
        ch["parameters"] = {n: {"description": d} for n, d in zip(names, params, strict=True)}
    if text.startswith("Internal."):
        ch["tags"] = [{"name": "internal", "description": "between the backend's own services, not for the chat service"}]
    return {**ch, "messages": {k: ref("components", "messages", m) for k, m in messages.items()}}


def headers(required: bool = True, **described: str) -> dict[str, Any]:
    props = {k.replace("_", "-"): {"type": "string", "description": v} for k, v in described.items()}
    return {"type": "object", **({"required": ["Nats-Msg-Id"]} if required else {}), "properties": props}


def document() -> dict[str, Any]:
    channels: dict[str, Any] = {
        "usageEvent": channel(usage_subject, USAGE_TEXT, {"usageEvent": "UsageEvent"}, NOTES["UsageEvent"]["user_id"]),
        "polarWebhook": channel(topology.webhook_subject, WEBHOOK_TEXT, {"polarWebhook": "PolarWebhook"},
                                "Polar's event type, e.g. subscription.updated"),
        "subscriptionChanged": channel(SUBSCRIPTION_CHANGED, CHANGED_TEXT, {"subscriptionChanged": "SubscriptionChanged"}),
        "usageThreshold": channel(USAGE_THRESHOLD, THRESHOLD_TEXT, {"usageThreshold": "UsageThreshold"}),
    }
    operations: dict[str, Any] = {}
    for verb, (request, reply) in RPC.items():
        on = ("channels", f"billingRpc{verb.title()}")
        channels[on[1]] = channel(rpc_subject(verb), RPC_TEXT, {"request": request.__name__, "reply": reply.__name__,
                                                                "error": c.ErrorReply.__name__},
                                  queue=topology.RPC_QUEUE, reply=reply.__name__)
        operations[f"request{verb.title()}"] = {
            "action": "send", "channel": ref(*on), "messages": [ref(*on, "messages", "request")],
            "reply": {"channel": ref(*on), "messages": [ref(*on, "messages", m) for m in ("reply", "error")]}}
    channels["deadLetter"] = channel(topology.dead_letter_subject, DEAD_TEXT, {"deadLetter": "DeadLetter"},
                                     "the durable that gave up on the message", "the subject it was published on")
    for op, action, cid in [("publishUsage", "send", "usageEvent"), ("consumeUsage", "receive", "usageEvent"),
                            ("consumeWebhook", "receive", "polarWebhook"), ("publishDeadLetter", "send", "deadLetter"),
                            ("publishSubscriptionChanged", "send", "subscriptionChanged"),
                            ("publishUsageThreshold", "send", "usageThreshold")]:
        operations[op] = {"action": action, "channel": ref("channels", cid)}
    messages: dict[str, Any] = {m.__name__: {"payload": ref("components", "schemas", m.__name__)} for m in CONTRACTS}
    messages["UsageEvent"] = {"headers": headers(Nats_Msg_Id="the event_id"), **messages["UsageEvent"]}
    messages["PolarWebhook"] = {"headers": headers(Nats_Msg_Id="the webhook-id", webhook_id="Polar's webhook id",
                                                   webhook_timestamp="Polar's webhook timestamp"),
                                "payload": {"type": "object", "required": ["type", "timestamp", "data"], "properties": {
                                    "type": {"type": "string"}, "timestamp": {"type": "string", "format": "date-time"},
                                    "api_version": {"type": "string"}, "data": {"type": "object"}}}}
    messages["DeadLetter"] = {"headers": headers(False, x_dead_letter_reason="why the consumer gave up",
                                                 x_deliveries="how many deliveries it took"),
                              "payload": {"description": "the original body, unchanged"}}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Polar billing backend — messages",
                 "version": tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"],
                 "description": "What flows over NATS between the chat service, Polar's webhooks and the billing "
                 "backend.\nJSON bodies, UTF-8. JetStream subjects are stored (at-least-once, deduplicated by "
                 "Nats-Msg-Id inside the stream's\nduplicate window, then by the consumer's primary key forever).\n"},
        "defaultContentType": "application/json",
        "servers": {"nats": {"host": "127.0.0.1:4222", "protocol": "nats"}},
        "channels": channels, "operations": operations, "components": {"messages": messages, "schemas": schemas()},
    }


class _Dumper(yaml.SafeDumper):
    """Safe YAML laid out for reading: multi-line text as `|` blocks, a mapping or list of plain scalars on one line."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _flat(values: Iterable[Any]) -> bool:
    return not any(isinstance(v, dict | list) or "\n" in str(v) for v in values)


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, "|" if "\n" in s else None))
_Dumper.add_representer(dict, lambda d, m: d.represent_mapping("tag:yaml.org,2002:map", m, _flat(m.values())))
_Dumper.add_representer(list, lambda d, s: d.represent_sequence("tag:yaml.org,2002:seq", s, _flat(s)))


def render() -> str:
    body = yaml.dump(document(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
    return f"# Generated from the code by `{COMMAND}` (dev/asyncapi.py). Do not edit by hand.\n{body}"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" not in argv:
        DOC.write_text(text)
    elif not DOC.exists() or DOC.read_text() != text:
        print(f"docs/asyncapi.yaml differs from what the code generates: run `{COMMAND}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
