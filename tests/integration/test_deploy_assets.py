"""The monitoring assets in ``deploy/`` are valid for the real tools: Prometheus' config and alert
rules (``promtool``, rule unit tests included), Alertmanager's config and routing (``amtool``), and
the Grafana dashboard and provisioning files."""

from __future__ import annotations

import re
import subprocess
from typing import Any

from tests.helpers import REPO
from tests.monitoring import (
    DASHBOARDS,
    DEPLOY,
    RULES,
    dashboard,
    documented_metrics,
    load_yaml,
    panel_queries,
    tool,
)

RULE_TESTS = DEPLOY / "rules" / "gateway_test.yml"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def run_tool(*args: str) -> str:
    """Run a monitoring binary from the repository root; its standard output."""
    result = subprocess.run(
        [tool(args[0]), *args[1:]],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of ``deploy/rules/gateway.yml``."""
    groups = load_yaml(RULES)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def metric_names(expr: str) -> set[str]:
    """The gateway metric families an expression reads (histogram series → their family)."""
    return {HISTOGRAM_SERIES.sub("", name) for name in re.findall(r"\bgateway_[a-z_]+", expr)}


def test_prometheus_config_and_rules_are_valid() -> None:
    assert "SUCCESS" in run_tool("promtool", "check", "config", "deploy/prometheus.yml")
    output = run_tool("promtool", "check", "rules", "deploy/rules/gateway.yml")
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_rule_unit_tests_pass() -> None:
    assert "SUCCESS" in run_tool("promtool", "test", "rules", "deploy/rules/gateway_test.yml")


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    cases = [case for test in load_yaml(RULE_TESTS)["tests"] for case in test["alert_rule_test"]]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case.get("exp_alerts") for case in mine), f"{rule['alert']} never fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{rule['alert']} always fires"


def test_rules_and_dashboard_read_only_exported_metrics() -> None:
    """Every ``gateway_*`` name is in the docs' metric tables (which the serving tests hold
    to what ``/metrics`` exports)."""
    tables = ("### Metrics", "### Loop metrics")
    documented = {name for table in tables for name in documented_metrics(table)}
    exprs = [rule["expr"] for rule in alert_rules()] + [q for _, q in panel_queries(dashboard())]
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert used - documented == set(), "not exported by the service"
    assert {"gateway_drift_detected", "gateway_model_info", "gateway_retrains_total"} <= used


def test_every_alert_has_a_severity_and_drift_carries_the_routing_labels() -> None:
    rules = alert_rules()
    assert all(rule["labels"]["severity"] in {"page", "warning"} for rule in rules)
    drift = [rule for rule in rules if rule["labels"].get("kind") == "drift"]
    assert [rule["alert"] for rule in drift] == ["GatewayInputDrift"]
    assert "by (model, version)" in drift[0]["expr"]


def test_alertmanager_config_is_valid_and_routes_drift_to_the_webhook() -> None:
    config = "--config.file=deploy/alertmanager.yml"
    assert "SUCCESS" in run_tool("amtool", "check-config", "deploy/alertmanager.yml")

    def receiver(*labels: str) -> str:
        return run_tool("amtool", "config", "routes", "test", config, *labels).strip()

    assert receiver("alertname=GatewayInputDrift", "kind=drift", "model=loans") == (
        "gateway-retrain"
    )
    assert receiver("alertname=GatewayDown", "severity=page") == "default"

    am = load_yaml(DEPLOY / "alertmanager.yml")
    assert am["route"]["group_by"] == ["alertname", "model"]
    (hook,) = next(r for r in am["receivers"] if r["name"] == "gateway-retrain")["webhook_configs"]
    # The loop controller (gateway-controller), not the serving workers' port 3000.
    assert hook["url"] == "http://localhost:3100/alerts"
    assert hook["send_resolved"] is True
    authorization = hook["http_config"]["authorization"]
    assert authorization["type"] == "Bearer"
    assert "credentials_file" in authorization
    assert "credentials" not in authorization  # the token stays out of the file


def test_prometheus_scrapes_the_gateway_and_the_controller_and_alerts_alertmanager() -> None:
    config = load_yaml(DEPLOY / "prometheus.yml")
    (job,) = config["scrape_configs"]  # one job: what selects job="lineage-gateway" sees both
    assert job["job_name"] == "lineage-gateway"
    targets = [target for static in job["static_configs"] for target in static["targets"]]
    assert targets == ["localhost:3000", "localhost:3100"]  # bentoml serve, gateway-controller
    alertmanagers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == ["localhost:9093"]
    assert config["rule_files"] == ["rules/gateway.yml"]


def test_dashboard_panels_all_query_prometheus_by_the_provisioned_uid() -> None:
    (source,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus"
    board = dashboard()
    assert board["uid"] == "lineage-gateway"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{panel['title']}: empty expr"
            assert target.get("datasource", panel["datasource"])["uid"] == source["uid"]
    for variable in board["templating"]["list"]:
        assert variable["datasource"]["uid"] == source["uid"]
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("requests", "errors", "latency", "batch", "queue", "version", "class"):
        assert topic in titles, topic
    for topic in ("drift", "quality", "swaps", "retrains"):
        assert topic in titles, topic


def test_dashboard_provisioning_points_at_the_dashboards_folder() -> None:
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "lineage-gateway.yml")["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    # deploy/README.md mounts deploy/grafana/dashboards there; the file is in that folder.
    assert f"deploy/grafana/dashboards:{path}" in (DEPLOY / "README.md").read_text()
    assert [p.name for p in DASHBOARDS.glob("*.json")] == ["lineage-gateway.json"]
    mounted = "deploy/grafana/provisioning:/etc/grafana/provisioning"
    assert mounted in (DEPLOY / "README.md").read_text()
