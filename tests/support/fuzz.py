"""Hostile input that is still valid: Polar's webhook payloads generated from its OpenAPI document, edge values put
into them without leaving the schema, random JSON and bytes, and Standard Webhooks signatures over any bytes.

Everything here is deterministic: hypothesis runs derandomized (no example database), and the edge values are drawn
with a seeded `random.Random`.

Why the generator is built here and not one `hypothesis_jsonschema.from_schema` over a whole payload schema:
hypothesis-jsonschema re-canonicalises and merges the nested anyOf / oneOf object schemas on every draw, which for
Polar's checkout or subscription payloads costs 20-150 s per three examples. Here the structure (objects, arrays,
anyOf / oneOf) is composed with plain hypothesis strategies, and every leaf (strings with their formats and
patterns, numbers, enums, consts) comes from `from_schema`. Every payload is then checked against the document
itself (JSON Schema 2020-12, formats included), so only schema-valid payloads leave this module.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT202012

OPENAPI = Path(__file__).resolve().parents[2] / "polar_emulator" / "openapi" / "2026-10.openapi.json"
DOC_URI = "urn:polar-openapi"

# --- Polar's document ------------------------------------------------------------------------------------------


@cache
def document() -> dict[str, Any]:
    return json.loads(OPENAPI.read_text())


def webhook_schema_names() -> list[str]:
    """Every webhook type's payload schema: components.schemas named Webhook…Payload."""
    return sorted(n for n in document()["components"]["schemas"] if n.startswith("Webhook") and n.endswith("Payload"))


_ANNOTATIONS = frozenset({"title", "description", "examples", "example", "discriminator", "readOnly", "writeOnly",
                          "deprecated", "default", "x-speakeasy-enums"})


def resolved(name: str) -> Any:
    """Schema `name` with every $ref replaced by the component it names. A component reached again inside itself
    (Polar's Filter holds Filters) becomes `false` there: the generated payloads stop one level down."""
    schemas = document()["components"]["schemas"]

    def inline(node: Any, inside: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [inline(v, inside) for v in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            ref = node["$ref"].rsplit("/", 1)[-1]
            return False if ref in inside else inline(schemas[ref], (*inside, ref))
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _ANNOTATIONS:
                continue
            if key == "properties":
                out[key] = {p: inline(s, inside) for p, s in value.items()}
            elif key in ("const", "enum"):
                out[key] = value
            else:
                out[key] = inline(value, inside)
        return out

    return inline(schemas[name], (name,))


# RFC 3339, as JSON Schema's date-time: jsonschema checks it only with an optional package installed.
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _DATE_TIME.match(value):
        return False
    try:
        datetime.fromisoformat(value.upper())
        return True
    except ValueError:
        return False


def _is_uuid(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        uuid.UUID(value)
        return True
    except ValueError:
        return False


FORMAT_CHECKER = FormatChecker(formats=())
FORMAT_CHECKER.checks("date-time")(_is_date_time)
FORMAT_CHECKER.checks("uuid")(_is_uuid)
FORMAT_CHECKER.checks("uuid4")(_is_uuid)


@cache
def validator(name: str) -> Draft202012Validator:
    """Validates a payload against schema `name` of the document itself (refs and all), formats included."""
    registry = Registry().with_resource(DOC_URI, DRAFT202012.create_resource(document()))
    return Draft202012Validator({"$ref": f"{DOC_URI}#/components/schemas/{name}"}, registry=registry,
                                format_checker=FORMAT_CHECKER)


# --- generating from a schema ----------------------------------------------------------------------------------
# Formats the document uses that JSON Schema does not define (pydantic's), generated as Polar fills them.
FORMATS: dict[str, st.SearchStrategy[str]] = {
    "uuid4": st.uuids(version=4).map(str),
    "uuid": st.uuids().map(str),
    "ipvanyaddress": st.ip_addresses().map(str),
}
MAX_LIST = 3  # items per generated array: enough to be a list, small enough to stay fast
_STRUCTURE = frozenset({"anyOf", "oneOf", "properties", "additionalProperties", "required", "items", "prefixItems",
                        "minItems", "maxItems", "propertyNames", "type"})


_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {}


def strategy(schema: Any) -> st.SearchStrategy[Any]:
    """Values valid for `schema` (a `resolved` one): structure composed here, leaves from hypothesis-jsonschema.
    Built once per distinct schema: Polar's payloads repeat the same objects and leaves many times over."""
    key = json.dumps(schema, sort_keys=True)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = _strategy(schema)
    return _STRATEGIES[key]


def _strategy(schema: Any) -> st.SearchStrategy[Any]:
    if schema is False:
        return st.nothing()
    if schema is True or schema == {}:
        return from_schema(True)
    if set(schema) == {"anyOf"}:
        return st.one_of([strategy(b) for b in schema["anyOf"] if b is not False])
    if set(schema) == {"oneOf"}:  # Polar's variants overlap (a discount's `duration`): keep what fits exactly one
        fits = [Draft202012Validator(b, format_checker=FORMAT_CHECKER).is_valid for b in schema["oneOf"]]
        return st.one_of([strategy(b) for b in schema["oneOf"] if b is not False]).filter(
            lambda v: sum(fit(v) for fit in fits) == 1)
    kind = schema.get("type")
    if kind == "object" and ("properties" in schema or isinstance(schema.get("additionalProperties"), dict)) \
            and set(schema) <= _STRUCTURE:
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fixed = st.fixed_dictionaries({k: strategy(v) for k, v in props.items() if k in required},
                                      optional={k: strategy(v) for k, v in props.items() if k not in required})
        extra_schema = schema.get("additionalProperties")
        if not isinstance(extra_schema, dict):
            return fixed
        keys = from_schema({"type": "string", **schema.get("propertyNames", {})}).filter(lambda k: k not in props)
        extra = st.dictionaries(keys, strategy(extra_schema), max_size=MAX_LIST)
        return st.tuples(fixed, extra).map(lambda t: {**t[1], **t[0]})
    if kind == "array" and set(schema) <= _STRUCTURE:
        if "prefixItems" in schema:
            return st.tuples(*(strategy(s) for s in schema["prefixItems"])).map(list)
        low = schema.get("minItems", 0)
        high = min(schema.get("maxItems", MAX_LIST), max(low, MAX_LIST))
        return st.lists(strategy(schema.get("items", True)), min_size=low, max_size=high)
    return from_schema(schema, custom_formats=FORMATS)


def examples(strat: st.SearchStrategy[Any], n: int) -> list[Any]:
    """`n` values of `strat`, the same on every run (derandomized, no example database, no shrinking)."""
    found: list[Any] = []

    @settings(derandomize=True, database=None, max_examples=n, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strat)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found[:n]


def webhook_payloads(name: str, n: int) -> list[dict[str, Any]]:
    """Up to `n` distinct schema-valid payloads of webhook schema `name`."""
    seen: set[str] = set()
    out = []
    for payload in examples(strategy(resolved(name)), n):
        key = json.dumps(payload, sort_keys=True)
        if key not in seen and validator(name).is_valid(payload):
            seen.add(key)
            out.append(payload)
    return out


# --- edge values, kept schema-valid ----------------------------------------------------------------------------
CONTROLS = "".join(chr(c) for c in range(0x20)) + "\x7f\x85\u2028\u2029\ufeff\ufffd"
LONG = 10_000
VERY_LONG_ID = 5_000
EXTREME_DATES = (
    "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+05:30", "0001-01-01T00:00:00-12:00",
    "9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59-12:00", "9999-12-31T23:59:59+05:30",
    "2026-10-31T23:59:59.999999+14:00", "1970-01-01T00:00:00-00:00",
)
METADATA_NUMBERS = (0, -1, 2**53 + 1, 2**63, -(2**63) - 1, 10**300, int("9" * 4000), 1.5, -0.0, 1e308, 5e-324, True)

JsonPath = tuple[Any, ...]  # keys and indexes from the top of a JSON value


def leaves(value: Any, path: JsonPath = ()) -> Iterator[tuple[JsonPath, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, (*path, i))
    else:
        yield path, value


def get_at(value: Any, path: JsonPath) -> Any:
    for p in path:
        value = value[p]
    return value


def set_at(value: Any, path: JsonPath, new: Any) -> None:
    get_at(value, path[:-1])[path[-1]] = new


def has_at(value: Any, path: JsonPath) -> bool:
    try:
        get_at(value, path)
        return True
    except (KeyError, IndexError, TypeError):
        return False


def _dicts_named(value: Any, key: str, path: JsonPath = ()) -> Iterator[JsonPath]:
    """Paths of every dict value stored under `key`, at any depth."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key and isinstance(v, dict):
                yield (*path, k)
            yield from _dicts_named(v, key, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _dicts_named(v, key, (*path, i))


def keep_valid(name: str, original: dict[str, Any], mutated: dict[str, Any]) -> dict[str, Any]:
    """`mutated`, with every change the schema refuses put back as it was in `original`."""
    check = validator(name)
    for _ in range(50):
        errors = list(check.iter_errors(mutated))
        if not errors:
            return mutated
        for error in errors:
            path = tuple(error.absolute_path)
            while path and not has_at(original, path):
                path = path[:-1]
            if not path:
                return copy.deepcopy(original)
            if has_at(mutated, path[:-1]):
                set_at(mutated, path, copy.deepcopy(get_at(original, path)))
    return copy.deepcopy(original)


def _is_free_text(path: JsonPath, value: Any) -> bool:
    return isinstance(value, str) and path[-1:] != ("type",) and not _DATE_TIME.match(value) and not _uuid_like(value)


def _uuid_like(value: str) -> bool:
    return len(value) == 36 and value.count("-") == 4


ID_KEYS = ("external_id", "external_customer_id")  # where Polar carries our user id


def control_characters(payload: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Every free-text string gets NUL and other control characters inside it; so do the external ids (also where
    the generated payload had none) and metadata["__external_id"]."""
    out = copy.deepcopy(payload)
    for path, value in leaves(payload):
        if _is_free_text(path, value):
            cut = rng.randint(0, len(value))
            set_at(out, path, value[:cut] + "".join(rng.sample(CONTROLS, 6)) + "\x00" + value[cut:])
        elif path[-1:] in [(k,) for k in ID_KEYS]:
            set_at(out, path, "usr_\x00" + "".join(rng.sample(CONTROLS, 4)))
    for path in _dicts_named(payload, "metadata"):
        get_at(out, path)["__external_id"] = "usr_\x00deleted"
    return out


def long_strings(payload: dict[str, Any], rng: random.Random, how_many: int = 6) -> dict[str, Any]:
    """A few free-text strings become 10,000 characters (with a NUL and non-ASCII among them)."""
    out = copy.deepcopy(payload)
    texts = [p for p, v in leaves(payload) if _is_free_text(p, v)]
    for path in rng.sample(texts, min(how_many, len(texts))):
        filler = rng.choice(["x", "é", "\U0001f4b3", "\x00"])
        set_at(out, path, (rng.choice(["", "usr_"]) + filler * LONG)[:LONG])
    return out


def extreme_dates(payload: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Every date-time (the envelope's too) at year 1 or 9999, or with a +05:30 / -12:00 / +14:00 offset."""
    out = copy.deepcopy(payload)
    for path, value in leaves(payload):
        if isinstance(value, str) and _DATE_TIME.match(value):
            set_at(out, path, rng.choice(EXTREME_DATES))
    return out


def odd_metadata_and_ids(payload: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Numbers (huge, fractional, boolean) where metadata values are usually text; external ids of thousands of
    characters, in `external_id` and, as Polar keeps it after a soft delete, in metadata["__external_id"]."""
    out = copy.deepcopy(payload)
    for path in _dicts_named(payload, "metadata"):
        meta = get_at(out, path)
        for key in list(meta):
            meta[key] = rng.choice(METADATA_NUMBERS)
        meta["__external_id"] = rng.choice(["usr_" + "9" * VERY_LONG_ID, int("7" * 4000), 2**63, -1, 0.5])
        meta["n"] = rng.choice(METADATA_NUMBERS)
    for path, value in list(leaves(payload)):
        if path[-1:] in [(k,) for k in ID_KEYS]:
            set_at(out, path, "usr_" + rng.choice(["a", "\u00e9", "0"]) * VERY_LONG_ID)
    return out


EDGES: dict[str, Callable[[dict[str, Any], random.Random], dict[str, Any]]] = {
    "control_characters": control_characters,
    "long_strings": long_strings,
    "extreme_dates": extreme_dates,
    "odd_metadata_and_ids": odd_metadata_and_ids,
}


def with_edges(name: str, payload: dict[str, Any], seed: int) -> dict[str, dict[str, Any]]:
    """`payload` with each kind of edge value put in where the schema allows it; a kind that changed nothing (the
    schema allowed none of it here) is left out."""
    out = {}
    for kind, edge in EDGES.items():
        mutated = keep_valid(name, payload, edge(payload, random.Random(f"{seed}:{kind}")))
        if mutated != payload:
            out[kind] = mutated
    return out


# --- what the webhook log must show ----------------------------------------------------------------------------
def kept_as_sent(sent: Any, logged: Any) -> str | None:
    """None when the logged payload is what was sent, except for what the log says it changed: a NUL shown as
    U+FFFD, a redacted field shown as "[redacted]". Otherwise where the two differ."""
    def walk(a: Any, b: Any, where: str) -> str | None:
        if isinstance(a, dict) and isinstance(b, dict):
            keys = {k.replace("\x00", "\ufffd"): v for k, v in a.items()}
            if set(keys) != set(b):
                return f"{where}: keys {sorted(set(keys) ^ set(b))[:5]!r}"
            for k, v in keys.items():
                if b[k] == "[redacted]" and v is not None:
                    continue
                found = walk(v, b[k], f"{where}.{k}")
                if found:
                    return found
            return None
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                found = walk(x, y, f"{where}[{i}]")
                if found:
                    return found
            return None
        if isinstance(a, str) and isinstance(b, str):
            return None if a.replace("\x00", "\ufffd") == b else f"{where}: {a[:60]!r} logged as {b[:60]!r}"
        if isinstance(a, bool) or isinstance(b, bool):
            return None if a is b else f"{where}: {a!r} logged as {b!r}"
        if isinstance(a, int | float) and isinstance(b, int | float):
            return None if a == b or float(a) == float(b) else f"{where}: {a!r} logged as {b!r}"
        return None if a == b else f"{where}: {str(a)[:60]!r} logged as {str(b)[:60]!r}"

    return walk(sent, logged, "$")


def loads_logged(text: str) -> Any:
    """A logged payload (jsonb as text) as Python, with integers past Python's digit limit kept as text."""
    return json.loads(text, parse_int=lambda s: int(s) if len(s) <= 4000 else s)


# --- random JSON and bytes -------------------------------------------------------------------------------------
HOSTILE_TEXT = st.sampled_from(["", "\x00", "usr_\x00nul", "x" * LONG, "é" * 300, "\U0001f4b3" * 70, " ", "null",
                                "../../etc/passwd", "'; DROP TABLE users; --", "${jndi:ldap://x}", "*", ">", "a.b",
                                "\ud7ff\ue000\uffff", "\u202e\u200b", "1e309", "-1"])
HOSTILE_NUMBERS = st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64, 10**100, -(10**100), 0.5, -0.0, 1e308,
                                   5e-324])
JSON_LEAVES = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
               | st.text(max_size=40) | HOSTILE_TEXT | HOSTILE_NUMBERS)
JSON = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=12) | HOSTILE_TEXT, inner, max_size=4), max_leaves=12)


def near_valid(valid: dict[str, Any], fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid request with one or two fields given a hostile value (mostly of the right type, so it gets past the
    contract), now and then a field dropped, a value of any JSON type, or an unknown field added."""
    def build(draw: st.DrawFn) -> dict[str, Any]:
        out = dict(valid)
        for key in draw(st.lists(st.sampled_from(sorted(set(valid) | set(fields))), min_size=1, max_size=2,
                                 unique=True)):
            action = draw(st.sampled_from(["hostile"] * 6 + ["drop", "json"]))
            if action == "drop":
                out.pop(key, None)
            else:
                out[key] = draw(fields.get(key, JSON) if action == "hostile" else JSON)
        if draw(st.integers(0, 7)) == 0:
            out[draw(st.text(max_size=8))] = draw(JSON)
        return out
    return st.composite(build)()


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


BYTES = (st.binary(max_size=3000)
         | st.text(max_size=500).map(lambda s: s.encode("utf-8", "surrogatepass"))
         | JSON.map(json_bytes)
         | st.sampled_from([b"", b"{", b"}", b"[]", b"null", b"\x00" * 64, b"\xff\xfe", b'{"type":', b"\xef\xbb\xbf{}",
                            b'{"type":"a"}', b'{"type":"subscription.active"}', b'{"type":"' + b"a" * 200 + b'"}',
                            b'{"type":"..",' + b'"data":{}}', b'{"type":"x y"}', b'{"type":"sub.>"}']))


# --- signing any bytes -----------------------------------------------------------------------------------------
def sign_bytes(secret: str, body: bytes, webhook_id: str | None = None, ts: float | None = None) -> dict[str, str]:
    """Standard Webhooks headers for any body, UTF-8 or not (tests.support.webhooks.sign takes text only)."""
    webhook_id = webhook_id or f"wh_{uuid.uuid4().hex}"
    stamp = str(int(time.time() if ts is None else ts))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{webhook_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": webhook_id, "webhook-timestamp": stamp,
            "webhook-signature": f"v1,{base64.b64encode(mac).decode()}", "content-type": "application/json"}
