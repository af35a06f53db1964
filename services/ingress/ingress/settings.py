from pydantic import Field, SecretStr, field_validator

from shared.settings import ServiceSettings


class IngressSettings(ServiceSettings):
    polar_webhook_secret: SecretStr
    ingress_port: int = Field(8000, ge=1, le=65535)
    # Signs the status-page links (polar_billing_client.links); the chat service's client signs with the same secret.
    # Unset: the status pages answer 503.
    status_page_secret: SecretStr | None = None
    # Who may embed the pages in a frame: CSP frame-ancestors, e.g. "https://chat.example.com". none = nobody.
    pages_frame_ancestors: str = "'none'"
    # Where "back" links on the pages go.
    pages_app_url: str = "/"
    # Bearer keys of the chat API over HTTPS (/v1/*), comma-separated so a new key can be added before the old one
    # is removed. Unset: /v1/* answers 503.
    chat_api_keys: SecretStr | None = None

    @field_validator("pages_frame_ancestors")
    @classmethod
    def _frame_ancestors(cls, v: str) -> str:
        """CSP keywords need their quotes (`'none'`), which .env files and compose's env_file strip: put them back,
        or the header says `frame-ancestors none`, which browsers ignore (anyone could frame the pages)."""
        sources = v.replace(",", " ").split()
        if not sources:
            return "'none'"
        keywords = {"none", "self"}
        bare = [s.strip("'\"") for s in sources]
        fixed = [f"'{b.lower()}'" if b.lower() in keywords else b for b in bare]
        if "'none'" in fixed and len(fixed) > 1:
            raise ValueError("'none' cannot be combined with other sources")
        return " ".join(fixed)

    @field_validator("chat_api_keys", mode="before")
    @classmethod
    def _keys(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip():
            return None
        if isinstance(v, str) and any(len(k.strip()) < 16 for k in v.split(",")):
            raise ValueError("each key must be at least 16 characters")
        return v

    def api_keys(self) -> list[bytes]:
        keys = self.chat_api_keys.get_secret_value().split(",") if self.chat_api_keys else []
        return [k.strip().encode() for k in keys if k.strip()]
