"""Run the services as the processes `make run` and docker compose start."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from dev.embedded import free_port
from dev.stack import PYTHONPATH, ROOT

# name -> (python module, the env var of its HTTP port)
SERVICES = {
    "ingress": ("ingress", "INGRESS_PORT"),
    "billing": ("billing", "BILLING_HTTP_PORT"),
    "usage-sync": ("usage_sync", "USAGE_SYNC_HTTP_PORT"),
}


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POLAR_", "NATS_", "DATABASE_"))}
    env.update(PYTHONPATH=PYTHONPATH, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@dataclass
class ServiceProcess:
    name: str
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop_or_kill(self, timeout: float = 5.0) -> None:
        """For the emulator, which may be holding a response on purpose: uvicorn would wait for it."""
        try:
            self.stop(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# Every process a test started: whatever a failing test leaves running is killed at the end of the session.
STARTED: list[subprocess.Popen] = []


def kill_leftovers() -> None:
    for proc in STARTED:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def start_service(name: str, env: dict[str, str], log_dir: Path, port: int | None = None) -> ServiceProcess:
    module, port_var = SERVICES[name]
    port = port or free_port()
    log = log_dir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", module], env={**env, port_var: str(port)}, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    STARTED.append(proc)
    return ServiceProcess(name, proc, port, log)
