"""Prometheus and promtool for the tests (Debian's `prometheus` package, which `make test` installs): the shipped
config with other targets, a Prometheus process and its HTTP API, and which metric names a PromQL expression or a
/metrics page has."""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from dev.embedded import free_port
from tests.e2e.procs import STARTED

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "billing.json"


def missing() -> str | None:
    """Why Prometheus cannot run here, or None."""
    absent = [b for b in ("prometheus", "promtool") if shutil.which(b) is None]
    if absent:
        return (f"{' and '.join(absent)} not installed (Debian: apt-get install prometheus; make test installs it)")
    return None


def promtool(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *map(str, args)], check=False, capture_output=True, text=True, timeout=timeout)


# --- configuration --------------------------------------------------------------------------------------------------
def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def config_for(targets: dict[str, list[str]], rule_files: list[Path], interval: str = "1s") -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with `targets` ({job: ["host:port"]}) in place of the compose names, the
    scrape and evaluation intervals set to `interval`, and `rule_files` (absolute) in place of alerts.yml."""
    cfg = load_yaml(CONFIG)
    jobs = {sc["job_name"]: sc for sc in cfg["scrape_configs"]}
    if set(jobs) != set(targets):
        raise ValueError(f"targets for {sorted(targets)}, but the shipped config has jobs {sorted(jobs)}")
    for job, sc in jobs.items():
        sc["static_configs"] = [{"targets": targets[job]}]
    cfg["global"].update(scrape_interval=interval, evaluation_interval=interval, scrape_timeout=interval)
    cfg["rule_files"] = [str(p) for p in rule_files]
    return cfg


def rules(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for group in doc["groups"]:
        yield from group["rules"]


def alert_rule(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found = [r for r in rules(doc) if r.get("alert") == name]
    if len(found) != 1:
        raise KeyError(f"{len(found)} alert rules named {name}")
    return found[0]


# --- the process ----------------------------------------------------------------------------------------------------
@dataclass
class Prometheus:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        """The `data` of /api/v1/<path>; an error answer raises with Prometheus's message."""
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = r.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts: pending or firing (resolved ones are no longer listed)."""
        return self.api("alerts")["alerts"]

    def rules(self) -> list[dict[str, Any]]:
        return [r for g in self.api("rules")["groups"] for r in g["rules"]]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class PrometheusError(Exception):
    pass


def start_prometheus(config: dict[str, Any], workdir: Path, timeout: float = 30) -> Prometheus:
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = workdir / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["prometheus", f"--config.file={config_file}",
                                 f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT)
    STARTED.append(proc)  # killed at the end of the session if a test leaves it running
    prom = Prometheus(proc, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{prom.url}/-/ready", timeout=1).status_code == 200:
                return prom
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    prom.stop()
    raise AssertionError(f"prometheus not ready in {timeout}s:\n{log.read_text()[-3000:]}")


# --- metric names ---------------------------------------------------------------------------------------------------
# Series Prometheus makes itself for every target (not on any /metrics page).
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
             "scrape_series_added"}
_SUFFIXES = {"counter": ("", "_created"), "gauge": ("",), "untyped": ("",), "info": ("",), "stateset": ("",),
             "histogram": ("_bucket", "_sum", "_count", "_created"), "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
             "summary": ("", "_sum", "_count", "_created")}


def exported_names(metrics_text: str) -> set[str]:
    """Every series name a /metrics page (text format 0.0.4) can have, from its `# TYPE` lines: a labelled counter
    has its family there before its first increment gives it a sample."""
    names: set[str] = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            base = name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name
            for suffix in _SUFFIXES.get(kind, ("",)):
                names.add(name if suffix == "" else base + suffix)
    return names


_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "atan2",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
    "inf", "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.$])[a-zA-Z_:][\w:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (strings, label matchers, ranges, grouping labels, functions and
    keywords taken out); Grafana's $variables are ignored."""
    e = _STRING.sub('""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = _LABEL_LIST.sub(" ", e)
    names = set()
    for m in _IDENT.finditer(e):
        word = m.group(0)
        if word.lower() in _KEYWORDS or re.match(r"\s*\(", e[m.end():]):
            continue  # an operator, an aggregation, or a function call
        names.add(word)
    return names


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel, rows' collapsed panels included."""
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                out.append((p.get("title", ""), t["expr"]))
            walk(p.get("panels", []))

    walk(dashboard["panels"])
    return out


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression as Prometheus itself would be sent it by Grafana (its interval variables replaced)."""
    return (expr.replace("$__rate_interval", "1m").replace("${__rate_interval}", "1m")
            .replace("$__interval", "15s").replace("$__range", "1h"))
