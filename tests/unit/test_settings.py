import pytest
from billing.settings import BillingSettings
from ingress.settings import IngressSettings
from pydantic import ValidationError

from shared.settings import describe_error, polar_base_url

BASE = {"NATS_URL": "nats://127.0.0.1:4222", "DATABASE_URL": "postgresql://u@127.0.0.1/db"}


def _clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # no .env here
    for key in ("NATS_URL", "DATABASE_URL", "POLAR_WEBHOOK_SECRET", "POLAR_ACCESS_TOKEN", "POLAR_SERVER"):
        monkeypatch.delenv(key, raising=False)


def test_missing_secret_is_named_and_bad_urls_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    monkeypatch.setenv("NATS_URL", "localhost:4222")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    with pytest.raises(ValidationError) as exc:
        IngressSettings()
    msg = describe_error(exc.value)
    assert "POLAR_WEBHOOK_SECRET is required" in msg
    assert "NATS_URL must be a nats:// URL" in msg
    assert "localhost:4222" not in msg  # values are never echoed


def test_malformed_polar_server_never_echoes_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    for k, v in BASE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("POLAR_ACCESS_TOKEN", "polar_oat_supersecret")
    monkeypatch.setenv("POLAR_SERVER", "polar_oat_supersecret")  # pasted into the wrong variable
    with pytest.raises(ValidationError) as exc:
        BillingSettings()
    msg = describe_error(exc.value)
    assert msg.startswith("POLAR_SERVER must be sandbox, production or an http(s):// base URL")
    assert "supersecret" not in msg


def test_polar_server_accepts_environments_and_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    for k, v in BASE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("POLAR_SERVER", "http://127.0.0.1:9000/")
    monkeypatch.setenv("POLAR_ACCESS_TOKEN", "")
    s = BillingSettings()
    assert s.polar_base_url == "http://127.0.0.1:9000" and not s.polar_configured
    assert polar_base_url("production") == "https://api.polar.sh"
    assert polar_base_url("sandbox") == "https://sandbox-api.polar.sh"
