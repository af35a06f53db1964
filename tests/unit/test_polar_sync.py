"""usage_sync.polar_sync: a ledger row as a Polar event, and which events a Polar 422 names."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from usage_sync.polar_sync import refused_events, to_polar, vendor_of

NOW = datetime(2026, 3, 10, 15, 0, 0, tzinfo=UTC)


def row(**over: Any) -> dict[str, Any]:
    return {"event_id": "ev-1", "user_id": "u1", "model": "gpt-4o", "input_tokens": 1_200, "output_tokens": 300,
            "cached_input_tokens": 200, "occurred_at": datetime(2026, 3, 10, 14, 59, tzinfo=UTC),
            "custom_key": False, **over}


def test_a_row_becomes_a_polar_llm_event() -> None:
    assert to_polar(row(), "ai_usage", NOW) == {
        "name": "ai_usage",
        "external_customer_id": "u1",
        "external_id": "ev-1",
        "timestamp": "2026-03-10T14:59:00Z",
        "metadata": {
            "input_tokens": 1_200, "output_tokens": 300, "cached_input_tokens": 200, "total_tokens": 1_500,
            "model": "gpt-4o", "vendor": "openai", "strategy": "LLM", "custom_key": False,
            "_llm": {"vendor": "openai", "model": "gpt-4o", "input_tokens": 1_200, "cached_input_tokens": 200,
                     "output_tokens": 300, "total_tokens": 1_500},
        },
    }


@pytest.mark.parametrize(("custom_key", "billable"), [(False, 1_500), (True, 0)])
def test_total_tokens_is_what_the_plan_bills_while_llm_keeps_the_real_total(custom_key: bool, billable: int) -> None:
    meta = to_polar(row(custom_key=custom_key), "ai_usage", NOW)["metadata"]
    assert (meta["total_tokens"], meta["_llm"]["total_tokens"], meta["custom_key"]) == (billable, 1_500, custom_key)


@pytest.mark.parametrize(
    ("occurred_at", "timestamp"),
    [
        (datetime(2026, 3, 10, 14, 0, tzinfo=UTC), "2026-03-10T14:00:00Z"),
        (NOW - timedelta(seconds=3), "2026-03-10T14:59:57Z"),
        (NOW - timedelta(seconds=2), "2026-03-10T14:59:58Z"),
        (NOW - timedelta(seconds=1), "2026-03-10T14:59:58Z"),
        (NOW, "2026-03-10T14:59:58Z"),
        (NOW + timedelta(hours=1), "2026-03-10T14:59:58Z"),
        (datetime(2026, 3, 10, 16, 30, tzinfo=timezone(timedelta(hours=2))), "2026-03-10T14:30:00Z"),
        (datetime(2026, 3, 10, 14, 0, 0, 123_456, tzinfo=UTC), "2026-03-10T14:00:00.123456Z"),
    ],
)
def test_the_timestamp_is_utc_with_z_and_never_later_than_two_seconds_ago(occurred_at: datetime,
                                                                           timestamp: str) -> None:
    assert to_polar(row(occurred_at=occurred_at), "ai_usage", NOW)["timestamp"] == timestamp


@pytest.mark.parametrize(
    ("model", "vendor"),
    [
        ("gpt-4o", "openai"), ("GPT-3.5-Turbo", "openai"), ("o1-mini", "openai"), ("o3", "openai"),
        ("o4-mini", "openai"), ("chatgpt-4o-latest", "openai"), ("text-embedding-3-small", "openai"),
        ("openai/gpt-4o", "openai"),
        ("claude-3-5-haiku-latest", "anthropic"), ("anthropic/claude-opus-4", "anthropic"),
        ("anthropic.claude-3-haiku-20240307-v1:0", "anthropic"), ("bedrock/anthropic.claude-3-haiku", "anthropic"),
        ("gemini-1.5-pro", "google"), ("google/gemini-2.0-flash", "google"),
        ("mistral-large-latest", "mistral"), ("mixtral-8x7b", "mistral"), ("codestral-latest", "mistral"),
        ("Meta-Llama/Llama-3-70b", "meta-llama"), ("deepseek/deepseek-chat", "deepseek"),
        ("llama-3-70b", "unknown"), ("qwen2", "unknown"),
    ],
)
def test_vendor_of_model(model: str, vendor: str) -> None:
    assert vendor_of(model) == vendor
    event = to_polar(row(model=model), "ai_usage", NOW)
    assert event["metadata"]["vendor"] == event["metadata"]["_llm"]["vendor"] == vendor


@pytest.mark.parametrize(
    ("detail", "size", "refused"),
    [
        ([(("body", "events", 1, "timestamp"), "in the future")], 3, {1: "timestamp: in the future"}),
        ([(("body", "events", 0), "invalid event")], 3, {0: "event: invalid event"}),
        ([(("body", "events", 2, "metadata", "total_tokens"), "not an int")], 3,
         {2: "metadata.total_tokens: not an int"}),
        ([(("body", "events", 0, "name"), "too long"), (("body", "events", 2, "timestamp"), "bad"),
          (("body", "events", 0, "external_id"), "missing")], 3,
         {0: "name: too long; external_id: missing", 2: "timestamp: bad"}),
        ([(("body", "events", 3, "timestamp"), "bad"), (("body", "events", -1), "bad")], 3, {}),
        ([(("body", "events", 3, "timestamp"), "bad"), (("body", "events", 1), "bad")], 3, {1: "event: bad"}),
        ([(("body", "events"), "too many events")], 3, {}),
        ([(("body", "events", "0"), "key not an index")], 3, {}),
        ([(("body",), "invalid body"), (("query", "x"), "nope")], 3, {}),
        ([(("body", "customers", 0), "unknown customer")], 3, {}),
        ([], 3, {}),
    ],
)
def test_refused_events_maps_polar_422_detail_to_batch_indexes(detail: list, size: int,
                                                                 refused: dict[int, str]) -> None:
    assert refused_events(detail, size) == refused
