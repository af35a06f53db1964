from pydantic import Field, SecretStr

from shared.settings import ServiceSettings


class IngressSettings(ServiceSettings):
    polar_webhook_secret: SecretStr
    ingress_port: int = Field(8000, ge=1, le=65535)
