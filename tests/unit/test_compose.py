"""What docker-compose.yml needs from the rest of the repo, checked without a Compose binary (the compose file as
Compose renders it is tests/integration/test_compose_render.py's)."""
import importlib.util
import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_command_runs_a_module_the_image_contains() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name, svc in _compose()["services"].items():
        if svc.get("build"):
            assert svc["build"] == "." and svc["command"][:2] == ["python", "-m"], name
            module = svc["command"][2]
            spec = importlib.util.find_spec(module)
            assert spec is not None and spec.origin, f"{module} is not importable"
            top = Path(spec.origin).resolve().relative_to(ROOT).parts[0]  # shared/, services/, polar_emulator/
            assert f"COPY {top} " in dockerfile, f"the image lacks {top}/ for {module}"


def test_nats_keeps_jetstream_on_its_volume_and_fsyncs() -> None:
    conf = (ROOT / "deploy" / "nats.conf").read_text()
    assert re.search(r"jetstream\s*{[^}]*store_dir:\s*/data", conf) and "sync_interval: always" in conf


def test_env_example_lists_every_setting_the_services_read() -> None:
    from billing.settings import BillingSettings
    from ingress.settings import IngressSettings
    from usage_sync.settings import UsageSyncSettings

    listed = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    fields = {f.upper() for cls in (IngressSettings, BillingSettings, UsageSyncSettings) for f in cls.model_fields}
    assert fields <= listed, fields - listed


def _mount(svc: dict, source: str) -> str:
    return next(v.split(":")[1] for v in svc["volumes"] if v.split(":")[0] == source)


def test_prometheus_scrapes_every_app_service_and_loads_the_mounted_rules() -> None:
    services = _compose()["services"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    ports = {"ingress": "INGRESS_PORT", "billing": "BILLING_HTTP_PORT", "usage-sync": "USAGE_SYNC_HTTP_PORT"}
    assert targets == {f"{name}:{services[name]['environment'][var]}" for name, var in ports.items()}
    prom = services["prometheus"]
    config_dir = Path(_mount(prom, "./deploy/prometheus/prometheus.yml")).parent
    rules = {str(config_dir / r) for r in config["rule_files"]}  # relative paths are the config file's directory's
    assert rules == {_mount(prom, "./deploy/prometheus/alerts.yml")}


def test_grafana_provisions_the_prometheus_datasource_and_the_mounted_dashboard() -> None:
    services = _compose()["services"]
    provisioning = ROOT / "deploy/grafana/provisioning"
    [datasource] = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    prom_port = services["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert datasource["type"] == "prometheus" and datasource["url"] == f"http://prometheus:{prom_port}"
    [provider] = yaml.safe_load((provisioning / "dashboards/billing.yml").read_text())["providers"]
    dashboard = _mount(services["grafana"], "./deploy/grafana/billing.json")
    assert provider["type"] == "file" and provider["options"]["path"] == str(Path(dashboard).parent)
    # The dashboard's datasource references resolve: the provisioned uid, Grafana's built-in one, or a datasource
    # variable. An export "for sharing externally" (__inputs) does not: file provisioning fills in no inputs.
    text = (ROOT / "deploy/grafana/billing.json").read_text()
    board = json.loads(text)
    assert "__inputs" not in board
    variables = {v["name"] for v in board.get("templating", {}).get("list", []) if v["type"] == "datasource"}
    known = {datasource["uid"], "-- Grafana --"} | {f"${v}" for v in variables} | {f"${{{v}}}" for v in variables}
    uids = set(re.findall(r'"datasource"\s*:\s*{[^{}]*"uid"\s*:\s*"([^"]*)"', text))
    assert uids and uids <= known, uids - known
