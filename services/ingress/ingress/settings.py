from pydantic import Field, SecretStr

from shared.settings import ServiceSettings


class IngressSettings(ServiceSettings):
    polar_webhook_secret: SecretStr
    ingress_port: int = Field(8000, ge=1, le=65535)
    # Signs the status-page links (polar_billing_client.links); the chat service's client signs with the same secret.
    # Unset: the status pages answer 503.
    status_page_secret: SecretStr | None = None
    # Who may embed the pages in a frame: CSP frame-ancestors, e.g. "https://chat.example.com". 'none' = nobody.
    pages_frame_ancestors: str = "'none'"
    # Where "back" links on the pages go.
    pages_app_url: str = "/"
