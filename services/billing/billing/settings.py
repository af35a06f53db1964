from pydantic import Field

from shared.settings import PolarSettings, ServiceSettings


class BillingSettings(ServiceSettings, PolarSettings):
    billing_http_port: int = Field(8081, ge=1, le=65535)
    # Ingress's public address: default checkout success / cancel URLs point at its pages.
    public_base_url: str = "http://127.0.0.1:8000"
    # Webhook log rows (kept for replay) older than this are deleted.
    webhook_log_retention_days: int = Field(30, ge=1)
