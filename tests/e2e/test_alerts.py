"""deploy/prometheus (scrape config and alerts) and deploy/grafana/billing.json: promtool accepts them, the alert
expressions do what they say on synthetic series, every metric they name is one the services export, and a real
Prometheus scraping the services as processes raises UsageOutboxLagging when Polar stops taking usage, then clears it.

Prometheus and promtool are Debian's `prometheus` package (`make test` installs it); without them those tests skip.
"""
from __future__ import annotations

import asyncio
import copy
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from polar_billing_client.client import BillingClient

from tests.conftest import Servers, drop_database, new_database
from tests.e2e.client_stack import ClientStack, start_client_stack
from tests.support.emulator import admin
from tests.support.prometheus import (
    CONFIG,
    DASHBOARD,
    RULES,
    SYNTHETIC,
    Prometheus,
    alert_rule,
    config_for,
    dashboard_exprs,
    exported_names,
    grafana_to_promql,
    load_yaml,
    metric_names,
    missing,
    promtool,
    rules,
    start_prometheus,
)

ROOT = Path(__file__).resolve().parents[2]
NEEDS_PROMETHEUS = pytest.mark.skipif(missing() is not None, reason=str(missing()))
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
JOBS = {"ingress": "ingress:8000", "billing": "billing:8081", "usage-sync": "usage-sync:8082"}

# The test copy of alerts.yml: only UsageOutboxLagging's threshold and `for` shortened, its expression otherwise the
# shipped one.
LAG_RULE, LAG_THRESHOLD, LAG_FOR = "UsageOutboxLagging", 600, "2m"
FAST_THRESHOLD, FAST_FOR = 3, "2s"


def rules_doc() -> dict[str, Any]:
    return load_yaml(RULES)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def with_fast_lag(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    rule = alert_rule(doc, LAG_RULE)
    threshold = re.compile(rf">\s*{LAG_THRESHOLD}\b")
    assert len(threshold.findall(rule["expr"])) == 1 and rule["for"] == LAG_FOR, rule
    rule["expr"] = threshold.sub(f"> {FAST_THRESHOLD}", rule["expr"])
    rule["for"] = FAST_FOR
    return doc


def without_annotations(doc: dict[str, Any]) -> dict[str, Any]:
    """For promtool's unit tests, which compare annotations too: the expressions are what they test."""
    doc = copy.deepcopy(doc)
    for rule in rules(doc):
        rule.pop("annotations", None)
    return doc


# --- the files on their own -----------------------------------------------------------------------------------------
@NEEDS_PROMETHEUS
def test_promtool_accepts_the_rules_and_the_configs(tmp_path: Path) -> None:
    n = len(list(rules(rules_doc())))
    checked = promtool("check", "rules", RULES)
    assert checked.returncode == 0 and f"SUCCESS: {n} rules found" in checked.stdout, checked.stdout + checked.stderr
    shipped = promtool("check", "config", CONFIG)
    assert shipped.returncode == 0 and "SUCCESS: 1 rule files found" in shipped.stdout, shipped.stdout + shipped.stderr
    # What the tests run: the same config with other targets, and the rules with the short lag threshold.
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(with_fast_lag(rules_doc()), sort_keys=False))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config_for(
        {job: ["127.0.0.1:1"] for job in JOBS}, [tmp_path / "alerts.yml"])))
    ours = promtool("check", "config", tmp_path / "prometheus.yml")
    assert ours.returncode == 0, ours.stdout + ours.stderr


def test_the_scrape_config_matches_docker_compose() -> None:
    cfg = load_yaml(CONFIG)
    assert cfg["global"]["scrape_interval"] == "15s" and cfg["rule_files"] == ["alerts.yml"]
    assert {sc["job_name"]: [t for s in sc["static_configs"] for t in s["targets"]]
            for sc in cfg["scrape_configs"]} == {job: [target] for job, target in JOBS.items()}
    compose = load_yaml(ROOT / "docker-compose.yml")["services"]
    for job, target in JOBS.items():
        host, port = target.split(":")
        assert port in compose[host]["environment"].values(), f"{job}: compose does not run it on {port}"


def test_every_alert_says_how_bad_and_what_to_do() -> None:
    doc = rules_doc()
    alerts = {r["alert"]: r for r in rules(doc)}
    assert len(alerts) == len(list(rules(doc))), "alert names must be unique"
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"].strip() and len(rule["annotations"]["description"]) > 80, name
    lag = alerts[LAG_RULE]
    assert "usage_outbox_oldest_pending_seconds" in lag["expr"] and lag["for"] == LAG_FOR
    assert alerts["ServiceDown"]["expr"].startswith("up{") and alerts["ServiceDown"]["for"] == "2m"
    limited = alerts["PolarRateLimited"]["expr"]
    assert 'outcome="rate_limited"' in limited and "[10m]" in limited
    assert 'outcome=~"retry.*"' in alerts["ConsumerRetrying"]["expr"]
    says = {name: rule["annotations"]["description"] for name, rule in alerts.items()}
    assert "`polar-billing usage lag`" in says[LAG_RULE]
    assert "`polar-billing usage quarantined`" in says["UsageEventsQuarantined"]
    assert "`polar-billing usage resend --all`" in says["UsageEventsQuarantined"]
    assert "`polar-billing webhooks replay --failed`" in says["WebhooksDeadLettered"]
    assert "`polar-billing reconcile status`" in says["WebhookEndpointDisabled"]
    assert "`polar-billing reconcile drifts`" in says["PolarMeterDrift"]
    assert {a for a, r in alerts.items() if r["labels"]["severity"] == "critical"} == {
        LAG_RULE, "WebhooksDeadLettered", "WebhookIngressBrokerUnavailable", "ServiceDown", "WebhookEndpointDisabled"}


def test_the_operator_commands_they_name_exist() -> None:
    """Every `polar-billing …` an alert or a panel tells the operator to run is one the CLI accepts."""
    from ops.cli import parser

    texts = [a for r in rules(rules_doc()) for a in r["annotations"].values()]
    texts += [p.get("description", "") for p in dashboard()["panels"]]
    commands = {re.sub(r"\s+", " ", c) for t in texts for c in re.findall(r"`(polar-billing [^`]+)`", t)}
    assert len(commands) >= 6, commands
    for command in commands:
        argv = re.sub(r"\{\{[^}]*\}\}", "billing", command).replace("<event-id>…", "ev_1").replace("<id>…", "1")
        try:
            parser().parse_args(argv.split()[1:])
        except SystemExit:
            pytest.fail(f"polar-billing does not accept {command!r}")


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    return {"series": name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


def _fires(alert: str, at: str, *labels: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": lb} for lb in labels]}


US = {"job": "usage-sync", "instance": "usage-sync:8082"}
BILLING = {"job": "billing", "instance": "billing:8081"}
INGRESS = {"job": "ingress", "instance": "ingress:8000"}


@NEEDS_PROMETHEUS
def test_the_alert_expressions_on_synthetic_series(tmp_path: Path) -> None:
    """promtool's rule unit tests (one evaluation a minute), on the shipped expressions."""
    crit, warn = {"severity": "critical"}, {"severity": "warning"}
    up = [_series("up", lb, "1x60") for lb in (US, BILLING, INGRESS)]
    cases = [
        # The oldest event ages a minute a minute: over 600 s at 11 min, firing 2 min later. Two usage-syncs, one alert.
        {"input_series": [*up, _series("usage_outbox_oldest_pending_seconds", US, "0+60x30"),
                          _series("usage_outbox_oldest_pending_seconds", {**US, "instance": "us2:8082"}, "0+60x30")],
         "alert_rule_test": [_fires(LAG_RULE, "12m"), _fires(LAG_RULE, "13m", {"job": "usage-sync", **crit})]},
        # ... and a backlog that drains within 10 minutes never pages.
        {"input_series": [*up, _series("usage_outbox_oldest_pending_seconds", US, "0+60x9 0x20")],
         "alert_rule_test": [_fires(LAG_RULE, f"{m}m") for m in (9, 12, 20)]},
        # One event quarantined at 5 min: from the next evaluation until it leaves the 15 min window.
        {"input_series": [*up, _series("usage_polar_quarantined_total", US, "0x4 1x40")],
         "alert_rule_test": [_fires("UsageEventsQuarantined", "4m"),
                             _fires("UsageEventsQuarantined", "6m", {"job": "usage-sync", **warn}),
                             _fires("UsageEventsQuarantined", "25m")]},
        # A webhook dead-lettered for the first time: the labelled series appears at 1 (no increase() to see).
        {"input_series": [*up, _series("billing_webhooks_total", {**BILLING, "outcome": "dead_lettered"}, "_x20 1x20"),
                          _series("billing_webhooks_total", {**BILLING, "outcome": "applied"}, "0+5x40")],
         "alert_rule_test": [_fires("WebhooksDeadLettered", "19m"),
                             _fires("WebhooksDeadLettered", "21m", {"job": "billing", **crit}),
                             _fires("WebhooksDeadLettered", "40m")]},
        # ... a second one later: increase() sees it.
        {"input_series": [*up, _series("billing_webhooks_total", {**BILLING, "outcome": "dead_lettered"}, "1x30 2x20")],
         "alert_rule_test": [_fires("WebhooksDeadLettered", "25m"),
                             _fires("WebhooksDeadLettered", "32m", {"job": "billing", **crit})]},
        # ... but Prometheus started on empty storage does not page for an old count.
        {"input_series": [*up, _series("billing_webhooks_total", {**BILLING, "outcome": "dead_lettered"}, "3x40"),
                          _series("usage_events_dead_lettered_total", {**US, "reason": "malformed JSON"}, "2x40")],
         "alert_rule_test": [_fires("WebhooksDeadLettered", "1m"), _fires("WebhooksDeadLettered", "20m"),
                             _fires("UsageEventsDeadLettered", "1m")]},
        # Usage messages dead-lettered, with the reason as a label.
        {"input_series": [*up, _series("usage_events_dead_lettered_total", {**US, "reason": "malformed JSON"},
                                       "_x20 1 2x20")],
         "alert_rule_test": [_fires("UsageEventsDeadLettered", "22m",
                                    {"job": "usage-sync", "reason": "malformed JSON", **warn})]},
        # 429s: 6 a minute for 20 minutes pages after 5 minutes; a burst of 5 never does.
        {"input_series": [*up, _series("usage_polar_batches_total", {**US, "outcome": "rate_limited"},
                                       "0+6x20 120x20")],
         "alert_rule_test": [_fires("PolarRateLimited", "4m"),
                             _fires("PolarRateLimited", "8m", {"job": "usage-sync", **warn}),
                             _fires("PolarRateLimited", "35m")]},
        {"input_series": [*up, _series("usage_polar_batches_total", {**US, "outcome": "rate_limited"}, "0x5 5x30")],
         "alert_rule_test": [_fires("PolarRateLimited", f"{m}m") for m in (6, 10, 14)]},
        # A consumer retrying for over 10 minutes.
        {"input_series": [*up, _series("messaging_consumed_total",
                                       {**BILLING, "consumer": "billing", "outcome": "retry"}, "0+2x30")],
         "alert_rule_test": [_fires("ConsumerRetrying", "8m"),
                             _fires("ConsumerRetrying", "15m", {"job": "billing", "consumer": "billing",
                                                                "outcome": "retry", **warn})]},
        # Signatures failing: pages only while nothing is accepted.
        {"input_series": [*up, _series("ingress_webhooks_total", {**INGRESS, "outcome": "bad_signature"}, "0+1x30"),
                          _series("ingress_webhooks_total", {**INGRESS, "outcome": "stored"}, "0x30")],
         "alert_rule_test": [_fires("WebhookSignaturesFailing", "10m", {"job": "ingress", **warn})]},
        {"input_series": [*up, _series("ingress_webhooks_total", {**INGRESS, "outcome": "bad_signature"}, "0+1x30"),
                          _series("ingress_webhooks_total", {**INGRESS, "outcome": "stored"}, "0+3x30")],
         "alert_rule_test": [_fires("WebhookSignaturesFailing", "10m")]},
        # Our webhook endpoint disabled at Polar for 5 minutes pages; a sweep that re-enables it sooner does not.
        {"input_series": [*up, _series("billing_webhook_endpoint_enabled", BILLING, "1x5 0x20")],
         "alert_rule_test": [_fires("WebhookEndpointDisabled", "9m"),
                             _fires("WebhookEndpointDisabled", "11m", {"job": "billing", **crit})]},
        {"input_series": [*up, _series("billing_webhook_endpoint_enabled", BILLING, "1x5 0x3 1x20"),
                          _series("billing_webhook_endpoint_enabled", {**BILLING, "instance": "b2:8081"}, "-1x30")],
         "alert_rule_test": [_fires("WebhookEndpointDisabled", f"{m}m") for m in (8, 12, 20)]},
        # Sweeps failing for an hour with none succeeding; one success in the hour keeps it quiet.
        {"input_series": [*up, _series("billing_reconcile_sweeps_total", {**BILLING, "kind": "sweep",
                                                                         "outcome": "failed"}, "0+1x90"),
                          _series("billing_reconcile_sweeps_total", {**BILLING, "kind": "sweep", "outcome": "ok"},
                                  "0x90")],
         "alert_rule_test": [_fires("ReconciliationFailing", "70m", {"job": "billing", **warn})]},
        {"input_series": [*up, _series("billing_reconcile_sweeps_total", {**BILLING, "kind": "sweep",
                                                                         "outcome": "failed"}, "0+1x90"),
                          _series("billing_reconcile_sweeps_total", {**BILLING, "kind": "sweep", "outcome": "ok"},
                                  "0x40 1x50")],
         "alert_rule_test": [_fires("ReconciliationFailing", "70m")]},
        # A meter drift found.
        {"input_series": [*up, _series("billing_meter_drifts_total", BILLING, "0x10 1x30")],
         "alert_rule_test": [_fires("PolarMeterDrift", "5m"), _fires("PolarMeterDrift", "20m", {"job": "billing",
                                                                                                 **warn})]},
        # The ledger's daily run last completed 3 days ago (a gauge of its time); one completed an hour ago is quiet.
        {"input_series": [*up, _series("usage_retention_last_run_timestamp_seconds", US, "-259200x120")],
         "alert_rule_test": [_fires("UsageLedgerMaintenanceStale", "30m"),
                             _fires("UsageLedgerMaintenanceStale", "90m", {"job": "usage-sync", **warn})]},
        {"input_series": [*up, _series("usage_retention_last_run_timestamp_seconds", US, "-3600+60x120")],
         "alert_rule_test": [_fires("UsageLedgerMaintenanceStale", "90m")]},
        # Unsynced events dropped with their month.
        {"input_series": [*up, _series("usage_ledger_dropped_unsynced_total", US, "0x10 4x30")],
         "alert_rule_test": [_fires("UsageLedgerDroppedUnsynced", "5m"),
                             _fires("UsageLedgerDroppedUnsynced", "20m", {"job": "usage-sync", **warn})]},
        # Reads sent to the primary for over 10 minutes (a replica down or lagging); a blip of 3 minutes is quiet.
        {"input_series": [*up, _series("billing_replica_reads_on_primary_total", {**BILLING, "reason": "lagging"},
                                       "0x5 0+20x30")],
         "alert_rule_test": [_fires("BillingReadReplicaBypassed", "10m"),
                             _fires("BillingReadReplicaBypassed", "20m", {"job": "billing", "reason": "lagging",
                                                                          **warn})]},
        {"input_series": [*up, _series("billing_replica_reads_on_primary_total", {**BILLING, "reason": "unreachable"},
                                       "0x5 0+20x3 60x30")],
         "alert_rule_test": [_fires("BillingReadReplicaBypassed", "20m")]},
        # A service whose /metrics stops answering: down after 2 minutes.
        {"input_series": [_series("up", US, "1x5 0x10"), _series("up", BILLING, "1x15")],
         "alert_rule_test": [_fires("ServiceDown", "6m"), _fires("ServiceDown", "7m"),
                             _fires("ServiceDown", "8m", {**US, **crit})]},
    ]
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(without_annotations(rules_doc()), sort_keys=False))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({
        "rule_files": [str(tmp_path / "alerts.yml")], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", **case} for case in cases]}, sort_keys=False))
    result = promtool("test", "rules", tmp_path / "tests.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_model() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    [ds] = [v for v in dash["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] >= 1 and g["x"] + g["w"] <= 24 and g["h"] >= 1, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == DS and p["targets"], p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        assert all(t["datasource"] == DS and t["expr"].strip() for t in p["targets"]), p["title"]
    exprs = [e for _, e in dashboard_exprs(dash)]

    def has(*parts: str) -> bool:
        return any(all(part in e for part in parts) for e in exprs)

    assert has("sum by (outcome)", "ingress_webhooks_total") and has("sum by (outcome)", "billing_webhooks_total")
    for name in ("usage_events_received_total", "usage_events_inserted_total", "usage_events_duplicates_total",
                 "usage_polar_events_inserted_total", "usage_outbox_oldest_pending_seconds",
                 "usage_outbox_pending_events", "usage_polar_retries_total", "messaging_dead_lettered_total"):
        assert has(name), name
    assert has("sum by (outcome)", "usage_polar_batches_total") and has('outcome="rate_limited"')
    assert has("histogram_quantile", 'rpc_seconds_bucket{verb="check"}')
    assert has("sum by (verb, outcome)", "rpc_requests_total")


def test_every_label_value_matched_is_one_the_services_set() -> None:
    """outcome="rate_limited", verb="check", consumer!~"billing|usage-sync"…: a typo would match nothing, silently."""
    source = "\n".join(p.read_text() for d in ("services", "shared") for p in (ROOT / d).rglob("*.py"))
    exprs = [r["expr"] for r in rules(rules_doc())] + [e for _, e in dashboard_exprs(dashboard())]
    unknown = set()
    for expr in exprs:
        for label, _, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', expr):
            for alt in value.split("|"):
                if not re.fullmatch(r"[\w-]+", alt) or label == "le":
                    continue  # a real regular expression (retry.*), or a bucket bound
                if label == "job" and alt not in JOBS or label != "job" and f'"{alt}"' not in source:
                    unknown.add(f'{label}="{alt}"')
    assert not unknown, f"no service sets these label values: {sorted(unknown)}"


def test_metric_names_are_read_from_promql() -> None:
    assert metric_names('sum by (job, le) (increase(a_total{x="y", z=~"b|c"}[5m])) > 0 or b:rec unless c offset 15m '
                        'and on (job, instance) up offset 15m') == {"a_total", "b:rec", "c", "up"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(rpc_seconds_bucket[$__rate_interval]))) > 1e3") \
        == {"rpc_seconds_bucket"}
    text = ("# HELP x_total X\n# TYPE x_total counter\n# HELP h H\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\n"
            "# TYPE g gauge\n")
    assert exported_names(text) == {"x_total", "x_created", "h_bucket", "h_sum", "h_count", "h_created", "g"}


# --- against the services as processes ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(servers: Servers, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientStack]:
    """The emulator, ingress, billing and usage-sync on a database of their own."""
    db_url = asyncio.run(new_database(servers, template_db))
    s = asyncio.run(start_client_stack(servers.nats_url, db_url, tmp_path_factory.mktemp("alerts-stack")))
    yield s
    s.stop()
    asyncio.run(drop_database(servers, db_url))


@pytest.fixture(scope="module")
def prom(stack: ClientStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus on the shipped config, scraping and evaluating every second, with the short lag threshold."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("prometheus")
    (d / "alerts.yml").write_text(yaml.safe_dump(with_fast_lag(rules_doc()), sort_keys=False))
    targets = {"ingress": stack.ingress, "billing": stack.billing, "usage-sync": stack.usage_sync}
    p = start_prometheus(config_for({job: [f"127.0.0.1:{svc.port}"] for job, svc in targets.items()},
                                    [d / "alerts.yml"]), d)
    try:
        deadline = time.monotonic() + 20
        while True:
            active = p.api("targets")["activeTargets"]
            if len(active) == 3 and all(t["health"] == "up" for t in active):
                break
            assert time.monotonic() < deadline, active
            time.sleep(0.2)
        yield p
    finally:
        p.stop()


def test_every_metric_the_alerts_and_the_dashboard_use_is_exported(stack: ClientStack) -> None:
    exported: set[str] = set()
    for svc in (stack.ingress, stack.billing, stack.usage_sync):
        r = httpx.get(f"{svc.url}/metrics", timeout=10, follow_redirects=True)
        assert r.status_code == 200, svc.name
        exported |= exported_names(r.text)
    used = [(f"alert {r['alert']}", r["expr"]) for r in rules(rules_doc())]
    used += [(f"panel {title!r}", expr) for title, expr in dashboard_exprs(dashboard())]
    unknown = {}
    for where, expr in used:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        if names - exported - SYNTHETIC:
            unknown[where] = sorted(names - exported - SYNTHETIC)
    assert not unknown, f"not on any service's /metrics: {unknown}"


@NEEDS_PROMETHEUS
def test_dashboard_queries_and_rules_evaluate_and_a_healthy_stack_raises_nothing(prom: Prometheus) -> None:
    for title, expr in dashboard_exprs(dashboard()):
        prom.api("query", query=grafana_to_promql(expr))  # raises with Prometheus's parse error
    deadline = time.monotonic() + 15
    while True:  # every rule evaluated at least once
        evaluated = prom.rules()
        if all(not r["lastEvaluation"].startswith("0001-") for r in evaluated):
            break
        assert time.monotonic() < deadline, evaluated
        time.sleep(0.2)
    time.sleep(2)  # a few evaluations with data
    assert len(evaluated) == len(list(rules(rules_doc())))
    assert {r["name"]: r["health"] for r in prom.rules()} == {r["name"]: "ok" for r in evaluated}
    assert prom.alerts() == []


@NEEDS_PROMETHEUS
async def test_outbox_lag_alert_goes_pending_then_firing_and_resolves(stack: ClientStack, prom: Prometheus) -> None:
    emulator = stack.emulator
    # Polar answers every ingest 429 (Retry-After 1 s): usage-sync keeps the events and retries every second.
    admin(emulator, "POST", "faults", json={"path": "/v1/events/ingest", "kind": "429", "count": 1_000_000,
                                            "retry_after": 1})
    user = f"usr_{uuid.uuid4().hex[:8]}"
    ids = [f"ev_alert_{uuid.uuid4().hex}" for _ in range(20)]
    client = await BillingClient.connect(stack.nats_url)
    try:
        for i, event_id in enumerate(ids):
            await client.track_usage(user_id=user, thread_id=f"th-{i % 3}", model="gpt-4o", input_tokens=100,
                                     output_tokens=50, event_id=event_id)
    finally:
        await client.close()

    seen: list[tuple[str, str]] = []  # (alertname, state), each change in order

    async def watch(until: Any, timeout: float) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            now = {a["labels"]["alertname"]: a for a in prom.alerts()}
            for name, a in now.items():
                if (name, a["state"]) not in seen:
                    seen.append((name, a["state"]))
            if until(now):
                return now
            assert time.monotonic() < deadline, f"seen {seen}, now {now}\n{stack.usage_sync.log.read_text()[-2000:]}"
            await asyncio.sleep(0.2)

    t0 = time.monotonic()
    now = await watch(lambda a: a.get(LAG_RULE, {}).get("state") == "firing", timeout=30)
    fired_after = time.monotonic() - t0
    assert seen.index((LAG_RULE, "pending")) < seen.index((LAG_RULE, "firing"))
    alert = now[LAG_RULE]
    assert alert["labels"] == {"alertname": LAG_RULE, "job": "usage-sync", "severity": "critical"}
    assert float(alert["value"]) > FAST_THRESHOLD
    assert re.fullmatch(r"Usage is not reaching Polar: the oldest unsynced event is [\d.]+s old",
                        alert["annotations"]["summary"]), alert["annotations"]
    assert "`polar-billing usage lag`" in alert["annotations"]["description"]
    # What the shipped 429 rule counts is what usage-sync counted for these real 429s (it pages after 10 in 10
    # minutes, lasting 5 minutes: the synthetic series above test that part).
    [limited] = prom.api("query", query='usage_polar_batches_total{outcome="rate_limited"}')["result"]
    assert float(limited["value"][1]) >= 2 and limited["metric"]["job"] == "usage-sync"

    admin(emulator, "DELETE", "faults")
    t1 = time.monotonic()
    await watch(lambda a: LAG_RULE not in a, timeout=20)
    resolved_after = time.monotonic() - t1
    [lag] = [r for r in prom.rules() if r["name"] == LAG_RULE]
    assert lag["state"] == "inactive" and lag["health"] == "ok"
    ingested = {e["external_id"] for e in admin(emulator, "GET", "events").json()["events"]}
    assert set(ids) <= ingested
    print(f"{LAG_RULE}: firing {fired_after:.1f}s after the events, resolved {resolved_after:.1f}s after the fault")
