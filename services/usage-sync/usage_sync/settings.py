from pydantic import Field

from shared.settings import PolarSettings, ServiceSettings


class UsageSyncSettings(ServiceSettings, PolarSettings):
    usage_sync_http_port: int = Field(8082, ge=1, le=65535)
    polar_usage_event_name: str = Field("ai_usage", min_length=1, max_length=128)
