from pydantic import Field, field_validator

from shared.settings import PolarSettings, ServiceSettings


class BillingSettings(ServiceSettings, PolarSettings):
    billing_http_port: int = Field(8081, ge=1, le=65535)
    # Ingress's public address: default checkout success / cancel URLs point at its pages.
    public_base_url: str = "http://127.0.0.1:8000"
    # Webhook log rows (kept for replay) older than this are deleted.
    webhook_log_retention_days: int = Field(30, ge=1)
    # Reconciliation with Polar (reconcile.py): a sweep every this many seconds; 0 turns it off.
    polar_reconcile_interval_seconds: float = Field(900.0, ge=0)
    # Our webhook endpoint at Polar, to re-enable and redeliver from; unset: the one whose URL is
    # PUBLIC_BASE_URL + /webhooks/polar.
    polar_webhook_endpoint_id: str | None = None
    # A streaming replica for the reads of check, status and usage (reserve and every write stay on DATABASE_URL);
    # unset: they read the primary. While the replica cannot be reached, or its replay is behind by more than
    # DATABASE_READ_MAX_LAG_SECONDS, they read the primary.
    database_read_url: str | None = None
    database_read_max_lag_seconds: float = Field(5.0, gt=0, le=3600)

    @field_validator("database_read_url", mode="before")
    @classmethod
    def _read_url(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip():
            return None
        if isinstance(v, str) and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return v

    @field_validator("polar_webhook_endpoint_id", mode="before")
    @classmethod
    def _endpoint_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v
