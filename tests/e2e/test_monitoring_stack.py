"""The monitoring stack of ``deploy/`` against real processes: a two-worker ``bentoml serve`` and
the loop controller beside it (``gateway-controller``, on the same state directory), a real
Prometheus running ``deploy/prometheus.yml`` (scraping both under one job) and the rules of
``deploy/rules/gateway.yml``, and a real Alertmanager running ``deploy/alertmanager.yml``. Only
ports, paths and intervals are rendered for the test (and the rules' ``for:``, shortened); the
rule expressions, routes and receivers are the files' own.

One serve and one controller for the module. Drifted traffic makes ``GatewayInputDrift`` fire;
Alertmanager posts it to the controller's ``/alerts`` and exactly one retrain starts, however
often Alertmanager sends it again. The monitor's own alert is out of reach
(``drift_alert_windows`` 10,000), so only that path can retrain. Then every query of the Grafana
dashboard returns data from Prometheus."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import FAST_LOANS, train_ok
from tests.helpers import (
    free_port,
    http_ok,
    metric_samples,
    process,
    run_controller,
    serve_gateway,
    wait_until,
)
from tests.monitoring import (
    DEPLOY,
    RULES,
    dashboard,
    load_yaml,
    panel_queries,
    tool,
)
from tests.traffic import objects

WINDOW = 150
TOKEN = "am-s3cret"
JOB = "lineage-gateway"
# What Grafana would put in the dashboard's queries: its variables and $__rate_interval
# (4 scrapes of 1 s would do; 30 s keeps a rate defined between the test's bursts).
GRAFANA = {"$__rate_interval": "30s", "$job": JOB, "$model": "loans"}


@dataclass(frozen=True)
class Stack:
    base: str  # BentoML's port: the serving metrics Prometheus scrapes
    data: str  # the data plane
    controller: str  # the loop controller: its metrics are scraped too, Alertmanager posts to it
    prometheus: str
    alertmanager: str


def dump(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def render_prometheus(directory: Path, gateway: str, controller: str, alertmanager: str) -> Path:
    """deploy/prometheus.yml on the test's ports (its gateway and controller targets, still in
    one job) with 1-s intervals, beside its rules with ``for:`` cut to 1 s; the rule expressions
    stay as they are."""
    rules = load_yaml(RULES)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    config = load_yaml(DEPLOY / "prometheus.yml")
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = config["scrape_configs"]
    ports = {"localhost:3000": gateway, "localhost:3100": controller}
    for static in job["static_configs"]:
        static["targets"] = [ports.pop(target) for target in static["targets"]]
    assert ports == {}, f"deploy/prometheus.yml does not scrape {sorted(ports)}"
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    (rule_file,) = config["rule_files"]  # relative to the config, as in deploy/
    dump(directory / rule_file, rules)
    return dump(directory / "prometheus.yml", config)


def render_alertmanager(directory: Path, controller: str) -> Path:
    """deploy/alertmanager.yml posting to the test's controller with the test's token file, and
    grouping and repeating within seconds."""
    config = load_yaml(DEPLOY / "alertmanager.yml")
    for route in [config["route"], *config["route"]["routes"]]:
        route.update(group_wait="1s", group_interval="1s", repeat_interval="2s")
    (hook,) = next(r for r in config["receivers"] if r["name"] == "gateway-retrain")[
        "webhook_configs"
    ]
    assert hook["url"].startswith("http://localhost:3100/"), hook["url"]
    hook["url"] = hook["url"].replace("http://localhost:3100", controller)
    directory.mkdir(parents=True, exist_ok=True)
    token = directory / "alert-token"
    token.write_text(TOKEN)
    hook["http_config"]["authorization"]["credentials_file"] = str(token)
    return dump(directory / "alertmanager.yml", config)


def api(url: str, **params: str) -> Any:
    """The ``data`` of a Prometheus HTTP API answer (Alertmanager's v2 answers as they are)."""
    r = httpx.get(url, params=params, timeout=10)
    assert r.status_code == 200, f"{url} {params}: {r.status_code} {r.text[:500]}"
    body = r.json()
    return body["data"] if isinstance(body, dict) and "data" in body else body


def query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = api(f"{stack.prometheus}/api/v1/query", query=expr)["result"]
    return result


def gateway_up(stack: Stack) -> bool:
    """Prometheus scrapes both targets of the job: the gateway and the controller."""
    targets = api(f"{stack.prometheus}/api/v1/targets")["activeTargets"]
    up = {t["scrapeUrl"] for t in targets if t["labels"]["job"] == JOB and t["health"] == "up"}
    return up == {f"{stack.base}/metrics", f"{stack.controller}/metrics"}


def metric(base: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` at ``base``/metrics whose labels include ``labels``."""
    samples = metric_samples(httpx.get(f"{base}/metrics", timeout=10).text, name)
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for key, v in samples.items() if all(w in key for w in wanted))


def retrains(stack: Stack) -> list[dict[str, Any]]:
    r = httpx.get(f"{stack.controller}/retrains", timeout=10)
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["retrains"]
    return found


def webhook_posts(stack: Stack) -> tuple[float, float]:
    """Alertmanager's posts to the webhook so far: ``(answered 2xx, failed)``."""
    name = "alertmanager_notification_requests"
    sent = metric(stack.alertmanager, f"{name}_total", integration="webhook")
    failed = metric(stack.alertmanager, f"{name}_failed_total", integration="webhook")
    return sent - failed, failed


def bulk(stack: Stack, records: list[dict[str, Any]]) -> list[str]:
    r = httpx.post(f"{stack.data}/predict/bulk", json={"applications": records}, timeout=60)
    assert r.status_code == 200, r.text
    ids: list[str] = r.json()["request_ids"]
    return ids


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, loans_data: Path) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("monitoring")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    train_ok(uri, "loans", "--data", str(loans_data), *FAST_LOANS)
    settings = {
        "state_dir": str(tmp / "state"),
        "drift_window": str(WINDOW),
        "drift_interval_s": "1",
        "drift_alert_windows": "10000",  # the monitor never alerts: only Alertmanager can
        "alert_token": TOKEN,
        "retrain_data": str(loans_data),
        "retrain_args": "--param epochs=0",  # cheap; an untrained challenger is rejected
    }
    with ExitStack() as running:
        base, data = running.enter_context(serve_gateway(uri, tmp, settings=settings))
        # The loop controller on the gateway's state_dir, so on its store (predictions.db).
        controller, controller_proc = running.enter_context(
            run_controller(uri, tmp, settings=settings)
        )
        wait_until(
            lambda: bool(httpx.get(f"{controller}/ready", timeout=2).json()["active"]),
            60,
            "the controller taking the lease",
            controller_proc,
        )
        am_port, prom_port = free_port(), free_port()
        am_config = render_alertmanager(tmp / "alertmanager", controller)
        alertmanager = running.enter_context(
            process(
                [
                    tool("prometheus-alertmanager"),
                    f"--config.file={am_config}",
                    f"--storage.path={tmp / 'alertmanager' / 'data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",  # no cluster: one instance
                ],
                cwd=tmp,
                env={},
                log=tmp / "alertmanager.log",
            )
        )
        am_url = f"http://127.0.0.1:{am_port}"
        wait_until(http_ok(f"{am_url}/-/ready"), 30, "alertmanager", alertmanager)
        prom_config = render_prometheus(
            tmp / "prometheus",
            base.removeprefix("http://"),
            controller.removeprefix("http://"),
            f"127.0.0.1:{am_port}",
        )
        prometheus = running.enter_context(
            process(
                [
                    tool("prometheus"),
                    f"--config.file={prom_config}",
                    f"--storage.tsdb.path={tmp / 'prometheus' / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--rules.alert.resend-delay=1s",
                ],
                cwd=tmp,
                env={},
                log=tmp / "prometheus.log",
            )
        )
        prom_url = f"http://127.0.0.1:{prom_port}"
        wait_until(http_ok(f"{prom_url}/-/ready"), 30, "prometheus", prometheus)
        found = Stack(base, data, controller, prom_url, am_url)
        wait_until(
            lambda: gateway_up(found), 30, "prometheus scraping gateway and controller", prometheus
        )
        yield found


@pytest.fixture(scope="module")
def alerted(stack: Stack) -> dict[str, Any]:
    """One window of a drifted population; the retrain it leads to, once started."""
    shifted, _ = objects(WINDOW, 1.0, 2)
    bulk(stack, shifted)
    wait_until(lambda: bool(retrains(stack)), 120, "a retrain started by an alert")
    (started,) = retrains(stack)
    return started


def test_drift_alert_goes_through_alertmanager_to_exactly_one_retrain(
    stack: Stack, alerted: dict[str, Any]
) -> None:
    # Prometheus fired the rule on the gateway's and the controller's gauges (one job), with the
    # labels the route needs.
    firing = [
        a
        for a in api(f"{stack.prometheus}/api/v1/alerts")["alerts"]
        if a["labels"]["alertname"] == "GatewayInputDrift" and a["state"] == "firing"
    ]
    assert [a["labels"] for a in firing] == [
        {
            "alertname": "GatewayInputDrift",
            "kind": "drift",
            "model": "loans",
            "severity": "warning",
            "version": "1",
        }
    ], firing
    # Alertmanager routed it to the controller's webhook.
    held = [
        a
        for a in api(f"{stack.alertmanager}/api/v2/alerts")
        if a["labels"]["alertname"] == "GatewayInputDrift"
    ]
    assert [r["name"] for a in held for r in a["receivers"]] == ["gateway-retrain"]
    # The retrain came from Alertmanager (the monitor's alert ids read "drift-…").
    assert alerted["alert_id"].startswith("alertmanager-"), alerted
    assert metric(stack.controller, "gateway_drift_alerts_total", source="alertmanager") == 1
    assert metric(stack.controller, "gateway_drift_alerts_total", source="monitor") == 0

    # Once it has ended (the gate rejects the untrained challenger), nothing stops another
    # retrain: Alertmanager keeps re-sending the firing alert, and none starts.
    wait_until(lambda: retrains(stack)[0]["finished"] is not None, 120, "the retrain's end")

    # The controller counts no requests of its own: Alertmanager's counters of its posts tell.
    before, _ = webhook_posts(stack)
    wait_until(
        lambda: webhook_posts(stack)[0] >= before + 3, 60, "three more posts from Alertmanager"
    )
    (only,) = retrains(stack)
    assert only["alert_id"] == alerted["alert_id"]
    assert only["result"] == "rejected", only
    assert metric(stack.controller, "gateway_drift_alerts_total", source="alertmanager") == 1
    # Every post was answered 2xx: none refused for the token (401), none by a standby (503).
    assert webhook_posts(stack)[1] == 0


def test_every_dashboard_query_returns_data(stack: Stack, alerted: dict[str, Any]) -> None:
    # Traffic of every kind the dashboard shows, from the drifted population (so the drift
    # alert stays as it is for the other test): single objects on both ports, bulk, refused
    # inputs, and ground truth for all of it.
    records, labels = objects(2 * WINDOW, 1.0, 3)
    ids = []
    for i, record in enumerate(records[:20]):
        url = stack.base if i % 2 else stack.data
        r = httpx.post(f"{url}/predict", json={"application": record}, timeout=30)
        assert r.status_code == 200, r.text
        ids.append(r.json()["request_id"])
    ids += bulk(stack, records[20:])
    refused: dict[int, dict[str, Any]] = {
        422: {"json": {"application": {**records[0], "age": 5}}},
        400: {"content": b"{not json", "headers": {"content-type": "application/json"}},
        415: {"content": b"age=5", "headers": {"content-type": "text/plain"}},
    }
    for status, request in refused.items():
        r = httpx.post(f"{stack.data}/predict", timeout=30, **request)
        assert r.status_code == status, r.text
    feedback = [{"request_id": i, "label": label} for i, label in zip(ids, labels, strict=True)]
    r = httpx.post(f"{stack.data}/feedback", json={"feedback": feedback}, timeout=30)
    assert r.json() == {"recorded": len(feedback)}

    assert gateway_up(stack)
    board = dashboard()
    for variable in board["templating"]["list"]:  # label_values(METRIC, LABEL) in Grafana
        selector, label = variable["definition"].removeprefix("label_values(")[:-1].rsplit(",", 1)
        for name, value in GRAFANA.items():
            selector = selector.replace(name, value)
        values = api(
            f"{stack.prometheus}/api/v1/label/{label.strip()}/values", **{"match[]": selector}
        )
        assert GRAFANA[f"${variable['name']}"] in values, (variable["name"], values)

    queries = panel_queries(board)
    for name, value in GRAFANA.items():
        queries = [(title, expr.replace(name, value)) for title, expr in queries]
    assert not [expr for _, expr in queries if "$" in expr]

    def empty() -> list[str]:
        return [f"{title}: {expr}" for title, expr in queries if not query(stack, expr)]

    deadline = time.monotonic() + 60  # the monitor's live quality and two scrapes of it
    missing = empty()
    while missing and time.monotonic() < deadline:
        time.sleep(1)
        missing = empty()
    assert missing == [], "\n".join(missing)
