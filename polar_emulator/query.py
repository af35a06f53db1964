"""Query parameters read the way Polar's FastAPI server reads them, and its `ListResource` pages.

- `page` > 0 and `limit` > 0, else 422; a `limit` above 100 is SERVED as 100 (`get_pagination_params` takes
  `min(API_PAGINATION_MAX_LIMIT, limit)`), not refused.
- `max_page` is `ceil(total_count / limit)`: 0 for an empty list.
- Filters that take several values are repeated keys (`?customer_id=a&customer_id=b`); booleans accept pydantic's
  spellings (true/false, 1/0, yes/no, on/off).
- `sorting` is a list of properties, `-` for descending; Postgres puts NULLs last ascending and first descending.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import UUID4, Field, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

MAX_LIMIT = 100


class QueryError(Exception):
    """A 422 in FastAPI's shape; raised while reading the query, answered by the app's exception handler."""

    def __init__(self, name: str, msg: str, type_: str, value: Any) -> None:
        super().__init__(msg)
        self.detail = [{"type": type_, "loc": ["query", name], "msg": msg, "input": value}]


async def query_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueryError)
    return JSONResponse({"detail": exc.detail}, status_code=422)


def _read(name: str, raw: str, adapter: TypeAdapter[Any], loc: tuple[str, str] | None = None) -> Any:
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        error = QueryError(name, e["msg"], e["type"], raw)
        error.detail[0]["loc"] = list(loc or ("query", name))
        raise error from None


_INT = TypeAdapter(Annotated[int, Field(gt=0)])
_BOOL: TypeAdapter[bool] = TypeAdapter(bool)
_UUID = TypeAdapter(UUID4)
_TIME: TypeAdapter[datetime] = TypeAdapter(datetime)


def positive_int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    return default if raw is None else int(_read(name, raw, _INT))


def pagination(request: Request) -> tuple[int, int]:
    return positive_int(request, "page", 1), min(MAX_LIMIT, positive_int(request, "limit", 10))


def boolean(request: Request, name: str) -> bool | None:
    raw = request.query_params.get(name)
    return None if raw is None else bool(_read(name, raw, _BOOL))


def strings(request: Request, name: str) -> list[str] | None:
    return request.query_params.getlist(name) or None


def uuids(request: Request, name: str) -> list[str] | None:
    values = strings(request, name)
    for v in values or []:
        _read(name, v, _UUID)
    return values


def path_uuid(value: str, name: str = "id") -> None:
    """A path id must be a UUID4 (FastAPI answers 422 at ["path", name] before the endpoint runs)."""
    _read(name, value, _UUID, ("path", name))


def one_of(request: Request, name: str, allowed: Sequence[str]) -> list[str] | None:
    values = strings(request, name)
    for v in values or []:
        if v not in allowed:
            expected = ", ".join(f"'{a}'" for a in allowed[:-1]) + f" or '{allowed[-1]}'"
            raise QueryError(name, f"Input should be {expected}", "enum", v)
    return values


def timestamp(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    t: datetime = _read(name, raw, _TIME)
    return t if t.tzinfo else t.replace(tzinfo=UTC)  # Polar compares in UTC


def parse_time(value: str) -> datetime:
    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def sort(items: list[dict[str, Any]], request: Request, keys: dict[str, Callable[[dict[str, Any]], Any]],
         default: str) -> list[dict[str, Any]]:
    """Order `items` by the `sorting` criteria (first one wins), ties broken by id so pages never overlap."""
    allowed = [p for k in keys for p in (k, f"-{k}")]
    criteria = one_of(request, "sorting", allowed) or [default]
    out = sorted(items, key=lambda o: o["id"])
    for criterion in reversed(criteria):  # stable sorts, least significant first
        desc = criterion.startswith("-")
        key = keys[criterion.removeprefix("-")]
        present = [o for o in out if key(o) is not None]
        missing = [o for o in out if key(o) is None]
        present.sort(key=key, reverse=desc)
        out = missing + present if desc else present + missing
    return out


def page_of(items: Sequence[Any], page: int, limit: int) -> JSONResponse:
    return JSONResponse({"items": list(items[(page - 1) * limit: page * limit]),
                         "pagination": {"total_count": len(items), "max_page": math.ceil(len(items) / limit)}})
