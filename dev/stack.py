"""`make run`: the whole stack on one machine, with the operator watching.

Starts embedded NATS / PostgreSQL where `NATS_URL` / `DATABASE_URL` are unset (data under `.data/`, so a restart keeps
state), applies migrations and the NATS topology, then runs ingress, billing and usage-sync as separate processes,
streaming their log lines tagged with the service's name. Ctrl-C (or SIGTERM) stops the services, then the servers.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values
from polar_billing_client import links

from dev.embedded import EmbeddedNats, EmbeddedPostgres, free_port, port_free
from shared import topology
from shared.db.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
# STACK_DATA_DIR moves the embedded servers' data (tests run a stack of their own beside yours).
DATA = Path(os.environ.get("STACK_DATA_DIR", ROOT / ".data")).resolve()
# Where the packages live: the repository root (shared, dev, polar_emulator), each service, and the client package.
PYTHONPATH = os.pathsep.join(str(ROOT / d) for d in (".", "services/ingress", "services/billing",
                                                     "services/usage-sync", "clients/python"))
STOP_BUDGET = 10.0  # seconds from Ctrl-C to everything gone
READY_TIMEOUT = 60.0

_print_lock = threading.Lock()


def say(line: str, tag: str = "stack") -> None:
    with _print_lock:
        print(f"{tag:<10} | {line}", flush=True)


@dataclass
class Child:
    name: str
    module: str
    port: int
    proc: subprocess.Popen | None = None
    ready_path: str = "/readyz"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _stream(child: Child) -> None:
    assert child.proc and child.proc.stdout
    for raw in child.proc.stdout:
        say(raw.decode(errors="replace").rstrip("\n"), child.name)


def _ready(url: str, path: str = "/readyz") -> bool:
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def _pick_port(preferred: int) -> int:
    return preferred if port_free(preferred) else free_port()


def _use_emulator(env: dict[str, str], emulator: Child, secret: str, ingress_port: int) -> None:
    """Point the services at the emulator and the emulator's webhooks at ingress (explicit settings win)."""
    from polar_emulator.config import PRO_PRODUCT_ID, TEAM_PRODUCT_ID, TOKENS_METER_ID

    token = env.get("EMULATOR_ACCESS_TOKEN") or "polar_oat_emulator_local"
    env.update(EMULATOR_PORT=str(emulator.port), EMULATOR_ACCESS_TOKEN=token, EMULATOR_WEBHOOK_SECRET=secret,
               EMULATOR_WEBHOOK_URL=f"http://127.0.0.1:{ingress_port}/webhooks/polar",
               POLAR_ACCESS_TOKEN=token, POLAR_SERVER=emulator.base_url)
    env.setdefault("POLAR_PRO_PRODUCT_ID", PRO_PRODUCT_ID)
    env.setdefault("POLAR_TEAM_PRODUCT_ID", TEAM_PRODUCT_ID)
    env.setdefault("POLAR_TOKENS_METER_ID", TOKENS_METER_ID)


def _local_secret(name: str, prefix: str) -> str:
    """A secret generated once for local use and kept under .data/, so a restart keeps it."""
    path = DATA / name
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        path.write_text(prefix + base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def _webhook_secret(env: dict[str, str]) -> tuple[str, str]:
    if env.get("POLAR_WEBHOOK_SECRET"):
        return env["POLAR_WEBHOOK_SECRET"], "from your environment"
    env["POLAR_WEBHOOK_SECRET_GENERATED"] = "1"
    return _local_secret("webhook_secret", "whsec_"), f"generated for local use, kept in {DATA / 'webhook_secret'}"


def secret_line(secret: str, origin: str, *, generated: bool) -> str:
    """A secret make run generated for local use is printed (the emulator signs with it); the operator's own only as a
    fingerprint (enough to tell two apart, nothing to sign with): log streams are often shipped elsewhere."""
    if generated:
        return f"webhook secret ({origin}): {secret}"
    return f"webhook secret ({origin}): sha256 fingerprint {hashlib.sha256(secret.encode()).hexdigest()[:12]}"


async def _prepare(nats_url: str, database_url: str) -> list[int]:
    applied = await migrate(database_url)
    await topology.apply(nats_url)
    return applied


def run() -> int:
    started = time.monotonic()
    # The environment wins over .env, as pydantic-settings does in each service.
    env = {k: v for k, v in dotenv_values(ROOT / ".env").items() if v is not None} | dict(os.environ)
    servers: list[EmbeddedNats | EmbeddedPostgres] = []
    children: list[Child] = []
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        if not env.get("NATS_URL"):
            nats = EmbeddedNats(DATA / "nats", port=_pick_port(4222))
            servers.append(nats)
            env["NATS_URL"] = nats.start()
            say(f"NATS (embedded, JetStream, data in .data/nats) on {env['NATS_URL']}")
        else:
            say("NATS: using NATS_URL from your environment")
        if not env.get("DATABASE_URL"):
            pg = EmbeddedPostgres(DATA / "postgres", port=_pick_port(5432))
            servers.append(pg)
            env["DATABASE_URL"] = pg.start()
            say(f"PostgreSQL (embedded, data in .data/postgres) on {env['DATABASE_URL']}")
        else:
            say("PostgreSQL: using DATABASE_URL from your environment")

        applied = asyncio.run(_prepare(env["NATS_URL"], env["DATABASE_URL"]))
        say(f"migrations: {'applied ' + ', '.join(f'{v:04d}' for v in applied) if applied else 'up to date'}; "
            "NATS streams and consumers in place")

        secret, origin = _webhook_secret(env)
        env["POLAR_WEBHOOK_SECRET"] = secret
        env["STATUS_PAGE_SECRET"] = env.get("STATUS_PAGE_SECRET") or _local_secret("status_page_secret", "")
        ingress_port = int(env.get("INGRESS_PORT", "8000"))
        children = [
            Child("ingress", "ingress", ingress_port),
            Child("billing", "billing", _pick_port(int(env.get("BILLING_HTTP_PORT", "8081")))),
            Child("usage-sync", "usage_sync", _pick_port(int(env.get("USAGE_SYNC_HTTP_PORT", "8082")))),
        ]
        if env.get("POLAR_ACCESS_TOKEN"):
            say(f"Polar: {env.get('POLAR_SERVER', 'sandbox')} (POLAR_ACCESS_TOKEN is set)")
        else:
            emulator = Child("polar-emulator", "polar_emulator", _pick_port(int(env.get("EMULATOR_PORT", "9000"))),
                             ready_path="/__emulator__/health")
            children.insert(0, emulator)
            _use_emulator(env, emulator, secret, ingress_port)
            say(f"Polar: the emulator on {emulator.base_url} (POLAR_ACCESS_TOKEN unset); it signs webhooks to "
                f"ingress with the secret below. Drive it: .venv/bin/polar-billing emulator --help")
        say(secret_line(secret, origin, generated=bool(env.pop("POLAR_WEBHOOK_SECRET_GENERATED", ""))))
        by_name = {c.name: c for c in children}
        env["BILLING_HTTP_PORT"] = str(by_name["billing"].port)
        env["USAGE_SYNC_HTTP_PORT"] = str(by_name["usage-sync"].port)
        env["PYTHONPATH"] = PYTHONPATH
        env["PYTHONUNBUFFERED"] = "1"
        for child in children:
            # Own session: Ctrl-C reaches only this supervisor, which stops the services in order.
            child.proc = subprocess.Popen([sys.executable, "-m", child.module], env=env, cwd=ROOT,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            threading.Thread(target=_stream, args=(child,), daemon=True).start()

        pending = {c.name: c for c in children}
        deadline = time.monotonic() + READY_TIMEOUT
        while pending and not stop.is_set():
            for name, child in list(pending.items()):
                if child.proc and child.proc.poll() is not None:
                    say(f"{name} exited with code {child.proc.returncode} while starting")
                    return 1
                if _ready(child.base_url, child.ready_path):
                    del pending[name]
            if time.monotonic() > deadline:
                say(f"not ready after {READY_TIMEOUT:.0f}s: {', '.join(pending)}")
                return 1
            time.sleep(0.1)
        if stop.is_set():
            return 0

        _write_stack_env(env, by_name)
        say(f"all services ready in {time.monotonic() - started:.1f}s")
        if "polar-emulator" in by_name:
            say(f"  polar       {by_name['polar-emulator'].base_url}   (emulator) admin: /__emulator__/")
        say(f"  ingress     {by_name['ingress'].base_url}   webhooks: POST /webhooks/polar   "
            "health: /healthz /readyz /metrics")
        say(f"  billing     {by_name['billing'].base_url}   health: /healthz /readyz /metrics   rpc: billing.rpc.*")
        say(f"  usage-sync  {by_name['usage-sync'].base_url}   health: /healthz /readyz /metrics   "
            "consumes usage.event.>")
        demo = links.status_page_url(by_name["ingress"].base_url, env["STATUS_PAGE_SECRET"], "usr_demo")
        say(f"  status page of usr_demo (valid 15 min): {demo}")
        say("Ctrl-C stops everything")

        while not stop.wait(0.5):
            for child in children:
                if child.proc and child.proc.poll() is not None:
                    say(f"{child.name} exited unexpectedly with code {child.proc.returncode}; stopping the stack")
                    return 1
        return 0
    finally:
        (DATA / "stack.env").unlink(missing_ok=True)
        _shutdown(children, servers)


def _write_stack_env(env: dict[str, str], by_name: dict[str, Child]) -> None:
    """Where this stack's servers listen, for `polar-billing` in another terminal (ops/cli.py reads it). No secret."""
    lines = [f"NATS_URL={env['NATS_URL']}", f"DATABASE_URL={env['DATABASE_URL']}"]
    for key in ("POLAR_PRO_PRODUCT_ID", "POLAR_TEAM_PRODUCT_ID"):
        if env.get(key):
            lines.append(f"{key}={env[key]}")
    if "polar-emulator" in by_name:
        lines.append(f"EMULATOR_URL={by_name['polar-emulator'].base_url}")
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / "stack.env").write_text("\n".join(lines) + "\n")


def _shutdown(children: list[Child], servers: list[EmbeddedNats | EmbeddedPostgres]) -> None:
    t0 = time.monotonic()
    running = [(c.name, c.proc) for c in children if c.proc and c.proc.poll() is None]
    if running or servers:
        say("stopping...")
    for _, proc in running:
        proc.send_signal(signal.SIGTERM)
    service_budget = STOP_BUDGET - 2.0  # leave time for the servers
    for name, proc in running:
        try:
            proc.wait(max(0.1, service_budget - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            say(f"{name} did not stop in time; killing it")
            proc.kill()
            proc.wait()
    for server in reversed(servers):
        server.stop(timeout=max(0.5, STOP_BUDGET - (time.monotonic() - t0) - 0.5))
    if running or servers:
        say(f"stopped in {time.monotonic() - t0:.1f}s")


if __name__ == "__main__":
    sys.exit(run())
