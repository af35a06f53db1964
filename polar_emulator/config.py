"""The emulator's settings: its own, read from EMULATOR_* variables (it is not one of our services)."""
from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Ids of the catalog the emulator serves: the Pro product and meter are those of shared/polar/webhook-examples.
PRO_PRODUCT_ID = "0f4c1a52-6d0e-4a3a-9f1b-2b6f3c7a9d10"
TEAM_PRODUCT_ID = "7b1e2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d4e"
TOKENS_METER_ID = "d5b0e6a2-8c4f-4b1e-a3d7-9f2c6e8b1a40"
# The id of the emulator's one webhook endpoint (a UUID4, as Polar's path parameter requires).
WEBHOOK_ENDPOINT_ID = "3f8e1c2a-5b7d-4e9f-a1c3-5d7e9f1b3c5e"


class EmulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMULATOR_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 9000
    access_token: str = "polar_oat_emulator"
    # The token's scopes, space- or comma-separated ("webhooks:read events:write"); unset: every scope.
    token_scopes: str | None = None
    organization_id: str = "1b0c3e5a-7d9f-4a2b-8c4d-6e8f0a1b2c3d"
    organization_slug: str = "acme-chat"
    # Where checkout and portal URLs point (the emulator's own pages, /frontend/...). Default: this emulator.
    frontend_url: str | None = None
    # Webhooks: the one endpoint (its id, where it sends), and the secret and scheme it signs with (standard | legacy).
    webhook_endpoint_id: str = WEBHOOK_ENDPOINT_ID
    webhook_url: str | None = None
    webhook_secret: str = Field("whsec_" + "ZW11bGF0b3Itd2ViaG9vay1zZWNyZXQtMzJieXRlcyE=", min_length=1)
    webhook_scheme: str = Field("standard", pattern="^(standard|legacy)$")
    webhook_timeout: float = 10.0
    webhook_max_attempts: int = 10
    # Polar waits 2 s·2^n (jittered) between attempts; tests compress it.
    webhook_backoff_base: float = 2.0
    # Polar disables an endpoint when an event fails for good and its last N completed events all failed.
    webhook_disable_after: int = Field(10, ge=1)
    # Refuse localhost URLs and enabling an endpoint that has one, as Polar does (off: the tests' receivers are local).
    webhook_reject_local_urls: bool = False
    # Per token, in a fixed window (Polar: 500/min production, 100/min sandbox); the window is compressible for tests.
    rate_limit_per_minute: int = 500
    rate_limit_window_seconds: float = Field(60.0, gt=0)
    meter_event_name: str = "ai_usage"
    meter_property: str = "total_tokens"
    pro_product_id: str = PRO_PRODUCT_ID
    team_product_id: str = TEAM_PRODUCT_ID
    tokens_meter_id: str = TOKENS_METER_ID
    pro_meter_credits: int = 1_000_000

    @property
    def frontend(self) -> str:
        return (self.frontend_url or f"http://{self.host}:{self.port}/frontend").rstrip("/")
