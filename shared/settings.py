"""The settings base every service's one settings class extends, and the start-up check that reads it.

A missing or malformed setting stops the process with one line naming the variable. The value is never echoed:
pydantic's own message carries `input_value`, which for a secret would be the secret.
"""
from __future__ import annotations

import sys
from typing import TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound="ServiceSettings")

POLAR_ENVIRONMENTS = ("sandbox", "production")


class ServiceSettings(BaseSettings):
    """What every service needs: the broker, the database, how to log."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    nats_url: str
    # num_replicas of every stream and durable (3 on a 3-node cluster), applied at start-up, raised or lowered in
    # place. Unset: new ones get 1 and existing ones keep theirs, so a process without it cannot scale R3 down.
    nats_stream_replicas: int | None = Field(None, ge=1, le=5)
    database_url: str
    log_level: str = "INFO"
    # Where the service's own HTTP port (health, readiness, metrics) listens; 0.0.0.0 in a container.
    http_host: str = "127.0.0.1"
    # Several processes of one service on one port (make run's INGRESS_WORKERS): the kernel spreads connections.
    http_reuse_port: bool = False
    # This process's own port beside a shared one: its /metrics and /readyz, not a neighbour's.
    instance_http_port: int | None = Field(None, ge=1, le=65535)

    @field_validator("nats_stream_replicas", "instance_http_port", mode="before")
    @classmethod
    def _unset_when_empty(cls, v: object) -> object:  # named apart from PolarSettings' (one would hide the other)
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("nats_url")
    @classmethod
    def _nats_scheme(cls, v: str) -> str:
        if not all(u.strip().startswith(("nats://", "tls://", "ws://", "wss://")) for u in v.split(",")):
            raise ValueError("must be a nats:// URL (several may be separated by commas)")
        return v

    @field_validator("database_url")
    @classmethod
    def _pg_scheme(cls, v: str) -> str:
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return v.upper()


def polar_base_url(server: str) -> str:
    """`POLAR_SERVER` → the SDK's base URL: `sandbox`, `production`, or a URL (the emulator)."""
    if server == "sandbox":
        return "https://sandbox-api.polar.sh"
    if server == "production":
        return "https://api.polar.sh"
    return server.rstrip("/")


def validate_polar_server(v: str) -> str:
    if v in POLAR_ENVIRONMENTS or v.startswith(("http://", "https://")):
        return v
    raise ValueError("must be sandbox, production or an http(s):// base URL")


def describe_error(exc: ValidationError) -> str:
    """One line per bad variable, named as the operator sets it, without the offending value."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        var = "_".join(str(p) for p in err["loc"]).upper() or "settings"
        if err["type"] == "missing":
            lines.append(f"{var} is required")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{var} {msg}" if msg[:1].islower() else f"{var}: {msg}")
    return "; ".join(lines)


def load_settings(cls: type[S], service: str) -> S:
    """Read the settings or exit(2) with one clear line on stderr."""
    try:
        return cls()
    except ValidationError as exc:
        print(f"{service}: configuration error: {describe_error(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


class PolarSettings(BaseSettings):
    """How a worker reaches Polar. Without an access token Polar is "not configured": the worker runs, keeps
    usage unsynced and answers link requests with `polar_not_configured`."""

    polar_access_token: SecretStr | None = None
    polar_server: str = "sandbox"
    polar_organization_id: str | None = None
    polar_pro_product_id: str | None = None
    polar_team_product_id: str | None = None
    polar_tokens_meter_id: str | None = None
    # The deployment's one Polar budget (shared/polar_budget.py), in requests per window; unset: 100 for sandbox,
    # 500 for production, 400 for any URL. The window is Polar's minute; tests compress it.
    polar_requests_per_minute: int | None = Field(None, ge=1, le=100_000)
    polar_rate_window_seconds: float = Field(60.0, gt=0, le=3600)

    @field_validator("polar_access_token", "polar_organization_id", "polar_pro_product_id", "polar_team_product_id",
                     "polar_tokens_meter_id", "polar_requests_per_minute", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("polar_server")
    @classmethod
    def _server(cls, v: str) -> str:
        return validate_polar_server(v.strip())

    @property
    def polar_configured(self) -> bool:
        return self.polar_access_token is not None

    @property
    def polar_base_url(self) -> str:
        return polar_base_url(self.polar_server)

    @property
    def polar_budget_per_window(self) -> int:
        if self.polar_requests_per_minute is not None:
            return self.polar_requests_per_minute
        return {"sandbox": 100, "production": 500}.get(self.polar_server, 400)
