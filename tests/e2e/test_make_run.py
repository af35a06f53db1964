"""`make run`'s supervisor: embedded servers, three services, tagged logs, Ctrl-C stops everything in under 10 s."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import httpx
import psutil

from dev.embedded import free_port
from tests.e2e.procs import ROOT, base_env


def test_make_run_starts_the_stack_and_ctrl_c_stops_it_within_10s_without_orphans(tmp_path, output_dir) -> None:
    ingress_port = free_port()
    env = base_env(STACK_DATA_DIR=str(tmp_path / "data"), INGRESS_PORT=str(ingress_port),
                   BILLING_HTTP_PORT=str(free_port()), USAGE_SYNC_HTTP_PORT=str(free_port()),
                   EMULATOR_PORT=str(free_port()))
    log = output_dir / "stack.log"
    with open(log, "wb") as out:
        stack = subprocess.Popen([sys.executable, "-m", "dev.stack"], env=env, cwd=ROOT, stdout=out,
                                 stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while "all services ready" not in log.read_text():
            assert stack.poll() is None, log.read_text()
            assert time.monotonic() - t0 < 60, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        assert "NATS (embedded" in text and "PostgreSQL (embedded" in text
        assert "webhook secret (generated for local use" in text
        assert "Polar: the emulator on" in text
        assert "Reconciliation with Polar: at start, then every 900 s" in text
        for tag in ("ingress    | {", "billing    | {", "usage-sync | {"):
            assert tag in text
        assert httpx.get(f"http://127.0.0.1:{ingress_port}/readyz").status_code == 200
        family = psutil.Process(stack.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in family)
        assert "nats-server" in names and "postgres" in names and "-m billing" in names
        assert "-m polar_emulator" in names
        # The whole loop works: the emulator's purchase webhooks are signed with the printed secret, verified
        # by ingress, and applied by billing.
        emulator_url = text.split("Polar: the emulator on ")[1].split()[0]
        buy = httpx.post(f"{emulator_url}/__emulator__/simulate/purchase",
                         json={"external_customer_id": "usr_run", "product_id": "0f4c1a52-6d0e-4a3a-9f1b-2b6f3c7a9d10"})
        assert buy.status_code == 200
        t1 = time.monotonic()
        while '"event": "webhook.applied"' not in log.read_text() or log.read_text().count("webhook.applied") < 6:
            assert time.monotonic() - t1 < 30, log.read_text()[-3000:]
            time.sleep(0.2)
        # The reconciler ran at start, and found the emulator's webhook endpoint (pointed at this ingress) enabled.
        t2 = time.monotonic()
        while '"event": "reconcile.sweep_done"' not in log.read_text():
            assert time.monotonic() - t2 < 30, log.read_text()[-3000:]
            time.sleep(0.2)
        sweep = next(json.loads(line.split("| ", 1)[1]) for line in log.read_text().splitlines()
                     if '"event": "reconcile.sweep_done"' in line)
        assert sweep["endpoint"] == "healthy", sweep
        run_the_readme_commands(env)
        # What Ctrl-C in the terminal does: SIGINT to the supervisor.
        t_stop = time.monotonic()
        stack.send_signal(signal.SIGINT)
        code = stack.wait(12)
        took = time.monotonic() - t_stop
    finally:
        if stack.poll() is None:
            stack.kill()
    assert code == 0, log.read_text()
    assert took < 10
    _gone, alive = psutil.wait_procs(family, timeout=1)
    assert alive == [], [p.cmdline() for p in alive]
    # A restart keeps state: the secret and the database are where they were.
    assert (tmp_path / "data" / "webhook_secret").exists() and (tmp_path / "data" / "postgres" / "pgdata").exists()
    assert os.path.exists(tmp_path / "data" / "nats" / "jetstream")
    assert not (tmp_path / "data" / "stack.env").exists()  # a stopped stack leaves no URLs to stale servers


def readme_commands() -> list[str]:
    """Every `.venv/bin/polar-billing …` line of the README's shell blocks, as written."""
    blocks = (ROOT / "README.md").read_text().split("```sh\n")[1:]
    lines = [line.strip() for block in blocks for line in block.split("```", 1)[0].splitlines()]
    return [line.split("  #", 1)[0].strip() for line in lines if line.startswith(".venv/bin/polar-billing ")]


def run_the_readme_commands(env: dict[str, str]) -> None:
    """Run in a second terminal while `make run` runs: each must work as typed, from the clone's root."""
    commands = readme_commands()
    assert len(commands) >= 15
    compose = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()
               if line.strip().startswith("docker compose exec billing polar-billing ")]
    operator = [c for c in commands if not c.startswith(".venv/bin/polar-billing emulator ")]
    assert [c.removeprefix("docker compose exec billing polar-billing ") for c in compose] == [
        c.removeprefix(".venv/bin/polar-billing ") for c in operator if " emulator " not in c][:len(compose)]
    outside = {k: v for k, v in env.items() if k not in ("NATS_URL", "DATABASE_URL", "PYTHONPATH")}
    for command in commands:
        res = subprocess.run(shlex.split(command), cwd=ROOT, env=outside, capture_output=True, text=True,
                             timeout=60, check=False)
        assert res.returncode == 0 and res.stdout.strip(), f"{command}: {res.returncode}\n{res.stdout}{res.stderr}"
    show = subprocess.run(shlex.split(".venv/bin/polar-billing users show usr_run --json"), cwd=ROOT, env=outside,
                          capture_output=True, text=True, timeout=60, check=False)
    assert json.loads(show.stdout)["status"]["plan"] == "pro"  # what the purchase above made of usr_run
