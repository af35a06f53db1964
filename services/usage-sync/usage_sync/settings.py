from pydantic import Field

from shared.settings import PolarSettings, ServiceSettings


class UsageSyncSettings(ServiceSettings, PolarSettings):
    usage_sync_http_port: int = Field(8082, ge=1, le=65535)
    polar_usage_event_name: str = Field("ai_usage", min_length=1, max_length=128)
    # Consuming: at most this many messages per batch (one transaction); batches grow with the load.
    usage_batch_size: int = Field(1000, ge=1, le=2000)
    # Batches handled at once by this process (each pull loop has its own subscription on the durable).
    usage_consumers: int = Field(2, ge=1, le=8)
    # Sending to Polar: events per request (also capped at 1 MB), the longest an event waits, requests per second.
    polar_ingest_batch_size: int = Field(1000, ge=1, le=5000)
    polar_flush_interval_seconds: float = Field(1.0, gt=0, le=2)
    polar_max_requests_per_second: float = Field(5.0, gt=0, le=8)
