import json
import subprocess
import sys

import httpx
import pytest

from tests.conftest import Servers
from tests.e2e.procs import ROOT, SERVICES, base_env, start_service

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "polar_oat_do_not_print_me_0123456789"


def _env(servers: Servers, database_url: str) -> dict[str, str]:
    return base_env(NATS_URL=servers.nats_url, DATABASE_URL=database_url, POLAR_WEBHOOK_SECRET=SECRET,
                    POLAR_ACCESS_TOKEN=TOKEN, POLAR_SERVER="http://127.0.0.1:9")


@pytest.mark.parametrize("name", list(SERVICES))
def test_service_starts_reports_ready_and_stops_on_sigterm_with_code_0(
    name: str, servers: Servers, database_url: str, output_dir
) -> None:
    svc = start_service(name, _env(servers, database_url), output_dir)
    try:
        svc.wait_ready()
        ready = httpx.get(f"{svc.url}/readyz").json()
        assert ready == {"ready": True, "checks": {"nats": "ok", "postgres": "ok"}}
        assert httpx.get(f"{svc.url}/healthz").json() == {"status": "ok", "service": name}
        metrics = httpx.get(f"{svc.url}/metrics/").text
        assert "process_resident_memory_bytes" in metrics
    finally:
        code = svc.stop()
    assert code == 0
    lines = [json.loads(line) for line in svc.log.read_text().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert "service.started" in events and "service.stopped" in events
    assert all(line["service"] == name for line in lines)
    assert SECRET not in svc.log.read_text() and TOKEN not in svc.log.read_text()


@pytest.mark.parametrize(
    ("name", "unset", "bad", "expected"),
    [
        ("ingress", "POLAR_WEBHOOK_SECRET", {}, "POLAR_WEBHOOK_SECRET is required"),
        ("billing", "DATABASE_URL", {}, "DATABASE_URL is required"),
        ("usage-sync", None, {"POLAR_SERVER": TOKEN}, "POLAR_SERVER must be sandbox, production or an http(s):// base URL"),
    ],
)
def test_missing_or_malformed_setting_exits_nonzero_naming_it_without_secrets(
    name: str, unset: str | None, bad: dict[str, str], expected: str, servers: Servers
) -> None:
    env = _env(servers, servers.database_url) | bad
    if unset:
        env.pop(unset)
    module = SERVICES[name][0]
    res = subprocess.run([sys.executable, "-m", module], env=env, cwd="/", check=False, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2
    out = res.stdout + res.stderr
    assert f"{name}: configuration error: {expected}" in out
    assert len(out.strip().splitlines()) == 1  # one clear line, no traceback
    assert SECRET not in out and TOKEN not in out


def test_a_service_reads_an_env_file(servers: Servers, database_url: str, tmp_path, output_dir) -> None:
    (tmp_path / ".env").write_text(f"POLAR_WEBHOOK_SECRET={SECRET}\n")
    env = _env(servers, database_url)
    env.pop("POLAR_WEBHOOK_SECRET")
    module = SERVICES["ingress"][0]
    script = (f"import os; os.chdir({str(tmp_path)!r}); "
              "from ingress.settings import IngressSettings; print(IngressSettings().polar_webhook_secret)")
    res = subprocess.run([sys.executable, "-c", script],
                         env=env, check=False, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "**********"  # read from .env, and masked when printed
    assert module == "ingress"
