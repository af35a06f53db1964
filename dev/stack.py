"""`make run`: the whole stack on one machine, with the operator watching.

Starts embedded NATS / PostgreSQL where `NATS_URL` / `DATABASE_URL` are unset (data under `.data/`, so a restart keeps
state; `NATS_CLUSTER_SIZE=3`: a 3-node JetStream cluster with R3 streams), applies migrations and the NATS topology,
then runs ingress, billing and usage-sync as separate processes (`INGRESS_WORKERS`, `BILLING_INSTANCES`,
`USAGE_SYNC_INSTANCES` of each), streaming their log lines tagged with the instance's name (`billing-2`). A process
that dies is restarted with a backoff while the others keep running. Ctrl-C (or SIGTERM) stops the services, then
the servers.
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
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values
from polar_billing_client import links

from dev.embedded import EmbeddedNats, EmbeddedNatsCluster, EmbeddedPostgres, free_port, port_free
from shared import topology
from shared.db.migrate import migrate
from shared.retry import backoff

ROOT = Path(__file__).resolve().parent.parent
# STACK_DATA_DIR moves the embedded servers' data (tests run a stack of their own beside yours).
DATA = Path(os.environ.get("STACK_DATA_DIR", ROOT / ".data")).resolve()
# Where the packages live: the repository root (shared, dev, polar_emulator), each service, and the client package.
PYTHONPATH = os.pathsep.join(str(ROOT / d) for d in (".", "services/ingress", "services/billing",
                                                     "services/usage-sync", "clients/python"))
STOP_BUDGET = 10.0  # seconds from Ctrl-C to everything gone
READY_TIMEOUT = 60.0
STABLE_AFTER = 30.0  # a process up this long that dies is restarted at once-ish again (its backoff starts over)
MAX_INSTANCES = 16
Server = EmbeddedNats | EmbeddedNatsCluster | EmbeddedPostgres

_print_lock = threading.Lock()


def say(line: str, tag: str = "stack") -> None:
    with _print_lock:
        print(f"{tag:<10} | {line}", flush=True)


@dataclass
class Child:
    """One process of the stack: a service instance or the emulator. Restarted when it dies, the rest keep running."""

    name: str  # its tag in the log stream: "billing", or "billing-2" when there are several
    module: str
    port: int  # its own HTTP port: readiness, metrics
    env: dict[str, str] = field(default_factory=dict)  # on top of the stack's environment
    ready_path: str = "/readyz"
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0  # in a row, each within STABLE_AFTER of its start
    restart_at: float | None = None  # dead, due to start again at this monotonic time
    awaiting_ready: bool = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _stream(child: Child, proc: subprocess.Popen) -> None:
    assert proc.stdout
    for raw in proc.stdout:
        say(raw.decode(errors="replace").rstrip("\n"), child.name)


def _spawn(child: Child, env: dict[str, str]) -> None:
    # Own session: Ctrl-C reaches only this supervisor, which stops the services in order.
    child.proc = subprocess.Popen([sys.executable, "-m", child.module], env={**env, **child.env}, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    child.started_at = time.monotonic()
    threading.Thread(target=_stream, args=(child, child.proc), daemon=True).start()


def _ready(url: str, path: str = "/readyz") -> bool:
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def _pick_port(preferred: int) -> int:
    return preferred if port_free(preferred) else free_port()


def _count(env: dict[str, str], var: str) -> int:
    raw = env.get(var) or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_INSTANCES:
        raise SystemExit(f"{var} must be a whole number from 1 to {MAX_INSTANCES}")
    return int(raw)


def instances(name: str, module: str, count: int, port_var: str, first_port: int) -> list[Child]:
    """`count` processes of one worker, each with its own HTTP port (the first keeps the configured one)."""
    if count == 1:
        return [Child(name, module, first_port, {port_var: str(first_port)})]
    ports = [first_port] + [_pick_port(first_port + 10 * i) for i in range(1, count)]
    return [Child(f"{name}-{i + 1}", module, port, {port_var: str(port)}) for i, port in enumerate(ports)]


def ingress_workers(count: int, public_port: int) -> list[Child]:
    """Ingress processes sharing the public port (SO_REUSEPORT; the kernel spreads connections and a dead one's
    share goes to the others), each also on a port of its own for its readiness and metrics."""
    if count == 1:
        return [Child("ingress", "ingress", public_port, {"INGRESS_PORT": str(public_port)})]
    workers = []
    for i in range(count):
        own = _pick_port(public_port + 10 * (i + 1))
        workers.append(Child(f"ingress-{i + 1}", "ingress", own, {
            "INGRESS_PORT": str(public_port), "HTTP_REUSE_PORT": "true", "INSTANCE_HTTP_PORT": str(own)}))
    return workers


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


async def _prepare(nats_url: str, database_url: str, replicas: int | None) -> list[int]:
    applied = await migrate(database_url)
    await topology.apply(nats_url, replicas)
    return applied


def _start_nats(env: dict[str, str]) -> Server | None:
    """Embedded NATS where NATS_URL is unset: one server, or NATS_CLUSTER_SIZE nodes with R3 (at most) streams."""
    size = _count(env, "NATS_CLUSTER_SIZE")
    if env.get("NATS_URL"):
        say("NATS: using NATS_URL from your environment" + (" (NATS_CLUSTER_SIZE ignored)" if size > 1 else ""))
        return None
    if size == 1:
        nats = EmbeddedNats(DATA / "nats", port=_pick_port(4222))
        env["NATS_URL"] = nats.start()
        say(f"NATS (embedded, JetStream, data in {_shown(DATA / 'nats')}) on {env['NATS_URL']}")
        return nats
    # Its own data directory: a single node's streams are not a cluster's, and switching back keeps them.
    cluster = EmbeddedNatsCluster(DATA / "nats-cluster", size, ports=[_pick_port(4222 + i) for i in range(size)])
    env["NATS_URL"] = cluster.start()
    if not env.get("NATS_STREAM_REPLICAS"):
        env["NATS_STREAM_REPLICAS"] = str(min(size, 3))
    say(f"NATS (embedded {size}-node JetStream cluster, R{env['NATS_STREAM_REPLICAS']} streams, "
        f"data in {_shown(DATA / 'nats-cluster')}) on {env['NATS_URL']}")
    return cluster


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _supervise(children: list[Child], env: dict[str, str], stop: threading.Event) -> None:
    """Until Ctrl-C: a process that dies is restarted after a backoff (1, 2, 4 … 30 s while it keeps dying
    young), and said so; the others keep running, so a second instance of a worker goes on serving meanwhile."""
    while not stop.wait(0.5):
        now = time.monotonic()
        for child in children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    _spawn(child, env)
                    child.awaiting_ready = True
                    say(f"{child.name} restarted (restart {child.restarts}, pid {child.proc.pid if child.proc else '?'})")
                continue
            if child.awaiting_ready and _ready(child.base_url, child.ready_path):
                child.awaiting_ready = False
                say(f"{child.name} ready again")
            if child.proc is None or child.proc.poll() is None:
                continue
            if now - child.started_at > STABLE_AFTER:
                child.restarts = 0
            child.restarts += 1
            delay = backoff(child.restarts, base=1.0, cap=30.0)
            alive = [c.name for c in children if c is not child and c.proc and c.proc.poll() is None]
            say(f"{child.name} exited unexpectedly with code {child.proc.returncode}; restarting it in {delay:.0f}s; "
                f"still running: {', '.join(alive) or 'nothing'}")
            child.restart_at = now + delay


def run() -> int:
    started = time.monotonic()
    # The environment wins over .env, as pydantic-settings does in each service.
    env = {k: v for k, v in dotenv_values(ROOT / ".env").items() if v is not None} | dict(os.environ)
    servers: list[Server] = []
    children: list[Child] = []
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        counts = {var: _count(env, var) for var in ("BILLING_INSTANCES", "USAGE_SYNC_INSTANCES", "INGRESS_WORKERS")}
        nats = _start_nats(env)
        if nats is not None:
            servers.append(nats)
        if not env.get("DATABASE_URL"):
            pg = EmbeddedPostgres(DATA / "postgres", port=_pick_port(5432))
            servers.append(pg)
            env["DATABASE_URL"] = pg.start()
            say(f"PostgreSQL (embedded, data in {_shown(DATA / 'postgres')}) on {env['DATABASE_URL']}")
        else:
            say("PostgreSQL: using DATABASE_URL from your environment")

        replicas = int(env["NATS_STREAM_REPLICAS"]) if env.get("NATS_STREAM_REPLICAS") else None
        applied = asyncio.run(_prepare(env["NATS_URL"], env["DATABASE_URL"], replicas))
        say(f"migrations: {'applied ' + ', '.join(f'{v:04d}' for v in applied) if applied else 'up to date'}; "
            f"NATS streams and consumers in place{f' (R{replicas})' if replicas else ''}")

        secret, origin = _webhook_secret(env)
        env["POLAR_WEBHOOK_SECRET"] = secret
        env["STATUS_PAGE_SECRET"] = env.get("STATUS_PAGE_SECRET") or _local_secret("status_page_secret", "")
        ingress_port = int(env.get("INGRESS_PORT", "8000"))
        # Where this ingress answers: checkout return links, and the webhook endpoint reconciliation looks after.
        env["PUBLIC_BASE_URL"] = env.get("PUBLIC_BASE_URL") or f"http://127.0.0.1:{ingress_port}"
        ingress = ingress_workers(counts["INGRESS_WORKERS"], ingress_port)
        billing = instances("billing", "billing", counts["BILLING_INSTANCES"], "BILLING_HTTP_PORT",
                            _pick_port(int(env.get("BILLING_HTTP_PORT", "8081"))))
        usage_sync = instances("usage-sync", "usage_sync", counts["USAGE_SYNC_INSTANCES"], "USAGE_SYNC_HTTP_PORT",
                               _pick_port(int(env.get("USAGE_SYNC_HTTP_PORT", "8082"))))
        children = [*ingress, *billing, *usage_sync]
        emulator: Child | None = None
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
        interval = env.get("POLAR_RECONCILE_INTERVAL_SECONDS", "900")
        say(f"Reconciliation with Polar: at start, then every {interval} s; billing's log says what each sweep "
            f"found (reconcile.*_done) and the webhook endpoint's health. See .venv/bin/polar-billing reconcile "
            f"status" if interval not in ("0", "0.0") else "Reconciliation with Polar: off "
            "(POLAR_RECONCILE_INTERVAL_SECONDS=0)")
        env["PYTHONPATH"] = PYTHONPATH
        env["PYTHONUNBUFFERED"] = "1"
        for child in children:
            _spawn(child, env)

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

        _write_stack_env(env, emulator)
        say(f"all services ready in {time.monotonic() - started:.1f}s")
        if emulator is not None:
            say(f"  polar       {emulator.base_url}   (emulator) admin: /__emulator__/")
        public = f"http://127.0.0.1:{ingress_port}"
        say(f"  ingress     {public}   webhooks: POST /webhooks/polar   health: /healthz /readyz /metrics")
        if len(ingress) > 1:
            say(f"              {len(ingress)} workers on that port; each one's own: "
                + ", ".join(f"{c.name} {c.base_url}" for c in ingress))
        for child in billing:
            say(f"  {child.name:<11} {child.base_url}   health: /healthz /readyz /metrics   rpc: billing.rpc.*")
        for child in usage_sync:
            say(f"  {child.name:<11} {child.base_url}   health: /healthz /readyz /metrics   consumes usage.event.>")
        demo = links.status_page_url(public, env["STATUS_PAGE_SECRET"], "usr_demo")
        say(f"  status page of usr_demo (valid 15 min): {demo}")
        say("Ctrl-C stops everything")

        _supervise(children, env, stop)
        return 0
    finally:
        (DATA / "stack.env").unlink(missing_ok=True)
        _shutdown(children, servers)


def _write_stack_env(env: dict[str, str], emulator: Child | None) -> None:
    """Where this stack's servers listen, for `polar-billing` in another terminal (ops/cli.py reads it). No secret."""
    lines = [f"NATS_URL={env['NATS_URL']}", f"DATABASE_URL={env['DATABASE_URL']}"]
    for key in ("POLAR_PRO_PRODUCT_ID", "POLAR_TEAM_PRODUCT_ID"):
        if env.get(key):
            lines.append(f"{key}={env[key]}")
    if emulator is not None:
        lines.append(f"EMULATOR_URL={emulator.base_url}")
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / "stack.env").write_text("\n".join(lines) + "\n")


def _shutdown(children: list[Child], servers: list[Server]) -> None:
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
