"""The Polar emulator as a process, and a webhook receiver that records what it is sent."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from polar.v2026_10 import PolarAsync

from dev.embedded import free_port
from tests.e2e.procs import ROOT, STARTED, ServiceProcess, base_env

TOKEN = "polar_oat_emulator_test_token"


def start_emulator(log_dir: Path, **settings: str) -> ServiceProcess:
    port = free_port()
    # `settings` may override these defaults (e.g. webhook_backoff_base).
    env = base_env(**{"EMULATOR_PORT": str(port), "EMULATOR_ACCESS_TOKEN": TOKEN,
                      "EMULATOR_WEBHOOK_BACKOFF_BASE": "0.05",
                      **{f"EMULATOR_{k.upper()}": v for k, v in settings.items()}})
    log = log_dir / "polar-emulator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "polar_emulator"], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    STARTED.append(proc)
    svc = ServiceProcess("polar-emulator", proc, port, log)
    for _ in range(200):
        try:
            httpx.get(f"{svc.url}/__emulator__/events", timeout=1)
            return svc
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError(log.read_text())


def admin(emulator: ServiceProcess, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{emulator.url}/__emulator__/{path}", timeout=30, **kwargs)


def polar(emulator: ServiceProcess, token: str = TOKEN, timeout: float = 5.0) -> PolarAsync:
    """polar-sdk's client, built as shared/polar.py builds it, pointed at the emulator."""
    return PolarAsync(token, base_url=emulator.url, timeout=timeout)


def wait_for_webhooks(emulator: ServiceProcess, seconds: float = 30) -> list[dict]:
    """Wait (up to `seconds`) until every send and retry in flight is done; the emulator's log of webhook events."""
    return admin(emulator, "GET", "webhooks", params={"wait": seconds}).json()["webhooks"]


def deliver_to(emulator: ServiceProcess, receiver: Receiver, **mode) -> None:
    """Point the emulator's webhook endpoint at `receiver`: one copy of each event, in order, one at a time."""
    admin(emulator, "POST", "delivery", json={"url": receiver.url, "max_copies": 1, "shuffle": False,
                                              "concurrent": False, **mode})


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    received: list[Received] = field(default_factory=list)
    fail_first: int = 0  # answer 500 to this many requests first
    failing: bool = False  # answer 500 to every request while set


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    port = free_port()
    receiver = Receiver(f"http://127.0.0.1:{port}/webhooks/polar")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
            failing = receiver.fail_first > 0 or receiver.failing
            receiver.fail_first -= 1
            self.send_response(500 if failing else 202)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
