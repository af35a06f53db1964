"""What an AI response cost the chat product, from the model's list price: the price catalog, as data.

Prices are US dollars per million tokens, for input (not cached), cached input and output; an entry applies to the
models its pattern matches (glob, case-insensitive, like the plans' model families) from the day it took effect. The
first pattern that matches a model decides; among its entries, the latest that took effect on or before the event.
A model no entry matches has no price: its cost is None, never 0, and it is counted as unpriced.

`cached_input_tokens` are part of `input_tokens` (as OpenAI and the usage contract count them): cost =
(input - cached) x input price + cached x cached price + output x output price. Costs are kept in micro-dollars.

A deployment overrides the catalog with a JSON file named by `MODEL_PRICES_FILE`:
    {"version": "2026-12-01-acme", "prices": [{"pattern": "gpt-4o*", "effective": "2026-12-01",
      "input": 2.5, "cached_input": 1.25, "output": 10}]}
Its entries come first (they win); `version` is recorded with every ledger row priced with it.
"""
from __future__ import annotations

import fnmatch
import functools
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class Price(BaseModel):
    model_config = ConfigDict(frozen=True)

    pattern: str = Field(min_length=1)
    effective: date
    input: Decimal = Field(ge=0)  # USD per million input tokens (not cached)
    cached_input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)


class PriceFile(BaseModel):
    version: str = Field(min_length=1, max_length=64)
    prices: list[Price]


def _p(pattern: str, effective: str, i: str, c: str, o: str) -> Price:
    return Price(pattern=pattern, effective=date.fromisoformat(effective), input=Decimal(i), cached_input=Decimal(c),
                 output=Decimal(o))


# List prices, USD per 1M tokens (input, cached input, output). More specific patterns first.
VERSION = "2026-11-30"
PRICES: tuple[Price, ...] = (
    # OpenAI
    _p("gpt-4o-mini*", "2024-07-18", "0.15", "0.075", "0.60"),
    _p("gpt-4o*", "2024-08-06", "2.50", "1.25", "10.00"),
    _p("gpt-4.1-nano*", "2025-04-14", "0.10", "0.025", "0.40"),
    _p("gpt-4.1-mini*", "2025-04-14", "0.40", "0.10", "1.60"),
    _p("gpt-4.1*", "2025-04-14", "2.00", "0.50", "8.00"),
    _p("gpt-3.5-turbo*", "2024-01-25", "0.50", "0.50", "1.50"),
    _p("o4-mini*", "2025-04-16", "1.10", "0.275", "4.40"),
    _p("o3-mini*", "2025-01-31", "1.10", "0.55", "4.40"),
    _p("o3*", "2025-06-10", "2.00", "0.50", "8.00"),
    _p("o1*", "2024-12-17", "15.00", "7.50", "60.00"),
    # Anthropic
    _p("claude-3-5-haiku*", "2024-11-04", "0.80", "0.08", "4.00"),
    _p("claude-3-haiku*", "2024-03-07", "0.25", "0.03", "1.25"),
    _p("claude-*haiku-4*", "2025-10-15", "1.00", "0.10", "5.00"),
    _p("claude-3-5-sonnet*", "2024-10-22", "3.00", "0.30", "15.00"),
    _p("claude-3-7-sonnet*", "2025-02-24", "3.00", "0.30", "15.00"),
    _p("claude-*sonnet-4*", "2025-05-22", "3.00", "0.30", "15.00"),
    _p("claude-*opus-4*", "2025-05-22", "15.00", "1.50", "75.00"),
    _p("claude-3-opus*", "2024-02-29", "15.00", "1.50", "75.00"),
    # Google
    _p("gemini-2.5-pro*", "2025-06-17", "1.25", "0.31", "10.00"),
    _p("gemini-2.5-flash-lite*", "2025-07-22", "0.10", "0.025", "0.40"),
    _p("gemini-2.5-flash*", "2025-06-17", "0.30", "0.075", "2.50"),
    _p("gemini-2.0-flash*", "2025-02-05", "0.10", "0.025", "0.40"),
    _p("gemini-1.5-pro*", "2024-10-01", "1.25", "0.3125", "5.00"),
    _p("gemini-1.5-flash*", "2024-10-01", "0.075", "0.01875", "0.30"),
    # Mistral
    _p("mistral-large*", "2024-11-18", "2.00", "2.00", "6.00"),
    _p("mistral-medium*", "2025-05-07", "0.40", "0.40", "2.00"),
    _p("mistral-small*", "2025-03-17", "0.10", "0.10", "0.30"),
    _p("codestral*", "2025-01-13", "0.30", "0.30", "0.90"),
    _p("open-mistral-nemo*", "2024-07-18", "0.15", "0.15", "0.15"),
)
PICO_PER_MICRO = 1_000_000


# eq=False: hashed by identity, so the per-event price caches below do not hash the whole catalog each call.
@dataclass(frozen=True, eq=False)
class PriceCatalog:
    version: str
    prices: tuple[Price, ...]

    @classmethod
    def load(cls, override: Path | None = None) -> PriceCatalog:
        if override is None:
            return cls(VERSION, PRICES)
        extra = PriceFile.model_validate(json.loads(override.read_text()))
        return cls(extra.version, (*extra.prices, *PRICES))

    def price(self, model: str, at: datetime | date) -> Price | None:
        day = at.astimezone(UTC).date() if isinstance(at, datetime) else at
        return self._price(model, day)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - catalogs live as long as the process; a batch repeats models
    def _price(self, model: str, day: date) -> Price | None:
        name = model.strip().lower().split("/")[-1]  # "openai/gpt-4o" prices as "gpt-4o"
        for p in self.prices:
            if fnmatch.fnmatchcase(name, p.pattern.lower()):
                live = [q for q in self.prices if q.pattern == p.pattern and q.effective <= day]
                return max(live, key=lambda q: q.effective) if live else None
        return None

    def cost_micro_usd(self, model: str, at: datetime, input_tokens: int, cached_input_tokens: int,
                       output_tokens: int) -> int | None:
        rates = self._rates(model, at.astimezone(UTC).date() if isinstance(at, datetime) else at)
        if rates is None:
            return None
        cached = min(cached_input_tokens, input_tokens)
        # Integers all the way (a batch prices thousands of events): rates are pico-dollars per token.
        pico = (input_tokens - cached) * rates[0] + cached * rates[1] + output_tokens * rates[2]
        return (pico + PICO_PER_MICRO // 2) // PICO_PER_MICRO

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - see _price
    def _rates(self, model: str, day: date) -> tuple[int, int, int] | None:
        """USD per million tokens = micro-dollars per token = 10^6 pico-dollars per token, exact for prices of up to
        six decimals."""
        price = self._price(model, day)
        if price is None:
            return None
        i, c, o = (int((rate * PICO_PER_MICRO).to_integral_value(rounding=ROUND_HALF_EVEN))
                   for rate in (price.input, price.cached_input, price.output))
        return i, c, o
