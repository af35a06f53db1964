"""`make run`'s supervisor: embedded servers, three services, tagged logs, Ctrl-C stops everything in under 10 s."""
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil

from shared.embedded import free_port
from tests.e2e.procs import ROOT, base_env


def test_make_run_starts_the_stack_and_ctrl_c_stops_it_within_10s_without_orphans(tmp_path, output_dir) -> None:
    ingress_port = free_port()
    env = base_env(STACK_DATA_DIR=str(tmp_path / "data"), INGRESS_PORT=str(ingress_port),
                   BILLING_HTTP_PORT=str(free_port()), USAGE_SYNC_HTTP_PORT=str(free_port()))
    log = output_dir / "stack.log"
    with open(log, "wb") as out:
        stack = subprocess.Popen([sys.executable, "-m", "shared.stack"], env=env, cwd=ROOT, stdout=out,
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
        assert "Polar: not configured" in text
        for tag in ("ingress    | {", "billing    | {", "usage-sync | {"):
            assert tag in text
        assert httpx.get(f"http://127.0.0.1:{ingress_port}/readyz").status_code == 200
        family = psutil.Process(stack.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in family)
        assert "nats-server" in names and "postgres" in names and "-m billing" in names
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
    gone, alive = psutil.wait_procs(family, timeout=1)
    assert alive == [], [p.cmdline() for p in alive]
    # A restart keeps state: the secret and the database are where they were.
    assert (tmp_path / "data" / "webhook_secret").exists() and (tmp_path / "data" / "postgres" / "pgdata").exists()
    assert os.path.exists(tmp_path / "data" / "nats" / "jetstream")
