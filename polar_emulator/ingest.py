"""`POST /v1/events/ingest` validation, the way Polar's server does it (pydantic under FastAPI): all or nothing,
errors as FastAPI's `detail` list whose `loc` names the event's index (docs/polar.md §8)."""
from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

MetadataStr = Annotated[str, StringConstraints(min_length=1, max_length=500)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=40)]


class LLMMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vendor: str
    model: str
    prompt: str | None = None
    response: str | None = None
    input_tokens: int
    cached_input_tokens: int | None = None
    output_tokens: int
    total_tokens: int


class CostMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: Decimal = Field(max_digits=17, decimal_places=12)
    currency: str = Field(pattern="^usd$")


class EventCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=128)
    timestamp: AwareDatetime | None = None
    external_customer_id: str | None = None
    customer_id: str | None = None
    external_member_id: str | None = None
    member_id: str | None = None
    external_id: str | None = None
    parent_id: str | None = None
    organization_id: str | None = None
    metadata: dict[MetadataKey, MetadataStr | int | float | bool | LLMMetadata | CostMetadata] = Field(
        default_factory=dict, max_length=50)

    @field_validator("timestamp")
    @classmethod
    def _in_the_past(cls, v: datetime | None) -> datetime | None:
        if v is not None and v > datetime.now(UTC):
            raise ValueError("Timestamp must be in the past.")
        return v

    @field_validator("metadata", mode="before")
    @classmethod
    def _reserved(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for key in ("_llm", "_cost"):
                if key in v and not isinstance(v[key], dict):
                    raise ValueError(f"{key} must be an object")
        return v

    @model_validator(mode="after")
    def _one_customer(self) -> EventCreate:
        if not (self.external_customer_id or self.customer_id):
            raise ValueError("external_customer_id or customer_id is required")
        return self


class EventsIngest(BaseModel):
    events: list[EventCreate]


def validate(body: Any) -> tuple[EventsIngest | None, list[dict[str, Any]]]:
    """The parsed batch, or FastAPI-style error details with `loc` starting at "body"."""
    try:
        return EventsIngest.model_validate(body), []
    except ValidationError as exc:
        details = []
        for err in exc.errors(include_url=False):
            item = {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
            if "input" in err:
                item["input"] = err["input"] if _jsonable(err["input"]) else str(err["input"])
            details.append(item)
        return None, details


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, dict))
