from pathlib import Path

from pydantic import Field, field_validator

from shared.prices import PriceCatalog
from shared.settings import PolarSettings, ServiceSettings


class UsageSyncSettings(ServiceSettings, PolarSettings):
    usage_sync_http_port: int = Field(8082, ge=1, le=65535)
    polar_usage_event_name: str = Field("ai_usage", min_length=1, max_length=128)
    # Consuming: at most this many messages per batch (one transaction); batches grow with the load.
    usage_batch_size: int = Field(1000, ge=1, le=2000)
    # Batches handled at once by this process (each pull loop has its own subscription on the durable).
    usage_consumers: int = Field(2, ge=1, le=8)
    # Sending to Polar: a request goes when this many events wait (or the oldest has waited the flush interval) and
    # takes all that wait (up to 20,000 or 5 MiB); at most this many requests per second, and at most half the
    # deployment's Polar budget (POLAR_REQUESTS_PER_MINUTE).
    polar_ingest_batch_size: int = Field(1000, ge=1, le=20_000)
    polar_flush_interval_seconds: float = Field(1.0, gt=0, le=2)
    polar_max_requests_per_second: float = Field(1.0, gt=0, le=8)
    # The ledger keeps events that occurred in the last this many days (whole months are dropped after it), and the
    # counters, threads, closed reservations and rollups of periods that ended before it are pruned. An event older
    # than this is not counted again (Polar's external_id dedup covers the invoice) but dead-lettered with its reason.
    usage_ledger_retention_days: int = Field(400, ge=35, le=3660)
    # A JSON price file whose entries take precedence over the built-in catalog (shared/prices.py says the format).
    model_prices_file: Path | None = None

    @field_validator("model_prices_file", mode="before")
    @classmethod
    def _prices(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip():
            return None
        if v is not None:
            try:
                PriceCatalog.load(Path(str(v)))
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot be used as a price file: {type(exc).__name__}") from None
        return v
