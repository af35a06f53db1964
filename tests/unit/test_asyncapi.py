"""docs/asyncapi.yaml is generated from the code (dev/asyncapi.py): it must match it, and its schemas must mean it."""
from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from billing.rpc import ENDPOINTS
from polar_billing_client import contracts
from polar_billing_client.contracts import UsageEvent
from polar_billing_client.subjects import rpc_subject
from pydantic import BaseModel

from dev import asyncapi

VERBS = ("check", "reserve", "release", "status", "usage", "checkout", "portal")
WIRE_MODELS = [m for m in vars(contracts).values() if isinstance(m, type) and issubclass(m, BaseModel)
               and m.__module__ == contracts.__name__ and m not in (contracts.Contract, contracts.Answer)]
EVENT = {"event_id": "evt_1", "user_id": "user_1", "thread_id": "thr_1", "model": "gpt-4o", "input_tokens": 120,
         "output_tokens": 30, "occurred_at": "2026-05-01T12:00:00+00:00"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return yaml.safe_load(asyncapi.DOC.read_text())


def test_the_committed_document_is_what_the_code_generates() -> None:
    assert asyncapi.DOC.read_text() == asyncapi.render(), (
        "docs/asyncapi.yaml differs from the code: run `.venv/bin/python -m dev.asyncapi` and commit the result")


def test_every_contract_has_its_schema_in_components(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert len(WIRE_MODELS) >= 18
    for model in WIRE_MODELS:
        assert model.__name__ in schemas, f"{model.__name__} is not in components.schemas"
        expected = model.model_json_schema(ref_template="#/components/schemas/{model}")
        assert schemas[model.__name__]["properties"].keys() == expected["properties"].keys(), model.__name__
        assert schemas[model.__name__].get("required") == expected.get("required"), model.__name__


def test_every_rpc_verb_has_a_channel_with_its_request_and_replies(doc: dict[str, Any]) -> None:
    served = {ep.verb: (ep.request, typing.get_type_hints(ep.handle)["return"]) for ep in ENDPOINTS}
    assert tuple(served) == VERBS and asyncapi.RPC == served  # the generator's table is what billing serves
    by_address = {ch["address"]: ch for ch in doc["channels"].values()}
    for verb, (request, reply) in served.items():
        messages = by_address[rpc_subject(verb)]["messages"]
        assert {k: v["$ref"].rsplit("/", 1)[1] for k, v in messages.items()} == {
            "request": request.__name__, "reply": reply.__name__, "error": "ErrorReply"}
        operation = doc["operations"][f"request{verb.title()}"]
        assert [m["$ref"].rsplit("/", 1)[1] for m in operation["reply"]["messages"]] == ["reply", "error"]


def test_the_usage_event_schema_accepts_a_valid_event_and_refuses_negative_tokens(doc: dict[str, Any]) -> None:
    payload = doc["components"]["messages"]["UsageEvent"]["payload"]
    validator = jsonschema.Draft202012Validator({**payload, "components": doc["components"]},
                                                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    UsageEvent.model_validate(EVENT)  # the example is valid for the code too
    validator.validate(EVENT)
    validator.validate({**EVENT, "reservation_id": None, "custom_key": True, "cached_input_tokens": 0})
    with pytest.raises(jsonschema.ValidationError, match="minimum"):
        validator.validate({**EVENT, "input_tokens": -1})
    with pytest.raises(jsonschema.ValidationError, match="required"):
        validator.validate({k: v for k, v in EVENT.items() if k != "event_id"})


def test_the_check_flag_fails_with_a_hint_when_the_file_is_stale(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "asyncapi.yaml"
    stale.write_text(asyncapi.render().replace("asyncapi: 3.0.0", "asyncapi: 2.6.0"))
    monkeypatch.setattr(asyncapi, "DOC", stale)
    assert asyncapi.main(["--check"]) == 1
    assert "run `.venv/bin/python -m dev.asyncapi`" in capsys.readouterr().err
    assert asyncapi.main([]) == 0 and asyncapi.main(["--check"]) == 0
