"""docker-compose.yml cannot run here (no Docker engine), so check what `docker compose config` would care about."""
import importlib.util
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = {"ingress": ("ingress", "INGRESS_PORT"), "billing": ("billing", "BILLING_HTTP_PORT"),
                "usage-sync": ("usage_sync", "USAGE_SYNC_HTTP_PORT")}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_app_service_is_built_configured_and_waits_for_healthy_dependencies() -> None:
    services = _compose()["services"]
    assert {"nats", "postgres", *APP_SERVICES} <= set(services)
    for name, (module, port_var) in APP_SERVICES.items():
        svc = services[name]
        assert svc["build"] == "." and (ROOT / "Dockerfile").exists()
        assert svc["command"] == ["python", "-m", module]
        assert importlib.util.find_spec(module) is not None, f"{module} is not importable"
        env = svc["environment"]
        assert env["NATS_URL"] == "nats://nats:4222"
        assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in env["DATABASE_URL"]
        assert env["HTTP_HOST"] == "0.0.0.0"
        assert svc["depends_on"] == {"nats": {"condition": "service_healthy"},
                                     "postgres": {"condition": "service_healthy"}}
        assert svc["env_file"] == [{"path": ".env", "required": False}]
        port = env[port_var]
        assert f"127.0.0.1:{port}/readyz" in " ".join(svc["healthcheck"]["test"])


def test_infrastructure_keeps_its_data_on_volumes_and_reports_health() -> None:
    compose = _compose()
    nats, pg = compose["services"]["nats"], compose["services"]["postgres"]
    assert "nats-data:/data" in nats["volumes"] and "postgres-data:/var/lib/postgresql/data" in pg["volumes"]
    assert {"nats-data", "postgres-data"} <= set(compose["volumes"])
    conf = (ROOT / "deploy" / "nats.conf").read_text()
    assert re.search(r"jetstream\s*{[^}]*store_dir:\s*/data", conf) and "sync_interval: always" in conf
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert "js-enabled-only" in " ".join(nats["healthcheck"]["test"])


def test_env_example_lists_every_setting_the_services_read() -> None:
    from billing.settings import BillingSettings
    from ingress.settings import IngressSettings
    from usage_sync.settings import UsageSyncSettings

    listed = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    fields = {f.upper() for cls in (IngressSettings, BillingSettings, UsageSyncSettings) for f in cls.model_fields}
    assert fields <= listed, fields - listed


def test_the_emulator_runs_under_the_dev_profile_and_delivers_to_ingress() -> None:
    emulator = _compose()["services"]["polar-emulator"]
    assert emulator["profiles"] == ["dev"] and emulator["command"] == ["python", "-m", "polar_emulator"]
    assert importlib.util.find_spec("polar_emulator") is not None
    assert emulator["environment"]["EMULATOR_WEBHOOK_URL"] == "http://ingress:8000/webhooks/polar"
    assert "COPY polar_emulator" in (ROOT / "Dockerfile").read_text()
