"""The closed loop on one host: a real two-worker ``bentoml serve``, a real ``gateway-controller``
and real MLflow, sharing the embedded store: drift → alert → ``trainers retrain --from-run`` on
labelled production traffic → gate → hot swap, with a client running throughout; the answer traced
back to the alert; then the failure cases through Alertmanager's webhook."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_LOANS, train_ok
from tests.helpers import cli, metric_samples, run_controller, serve_gateway, wait_until
from tests.monitoring import documented_metrics
from tests.traffic import SteadyClient, objects

WINDOW = 150
LOOP = {
    "drift_window": str(WINDOW),
    "drift_interval_s": "1",
    "drift_alert_windows": "2",
    "poll_interval_s": "1",
    "alert_token": "s3cret",
}


def send(base: str, records: list[dict[str, Any]]) -> list[str]:
    """Bulk calls of one window each; the request ids of the answers."""
    ids: list[str] = []
    for start in range(0, len(records), WINDOW):
        r = httpx.post(
            f"{base}/predict/bulk",
            json={"applications": records[start : start + WINDOW]},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        ids += r.json()["request_ids"]
    return ids


def counter(base: str, name: str) -> float:
    return sum(metric_samples(httpx.get(f"{base}/metrics").text, name).values())


@pytest.fixture
def store(tmp_path: Path, loans_data: Path) -> str:
    """A fresh store with v1 of loans as champion."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train_ok(uri, "loans", "--data", str(loans_data), *FAST_LOANS)
    return uri


def test_drift_retrains_on_feedback_and_swaps_without_a_failed_request(
    store: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    shifted_calm, _ = objects(50, 1.0, 97)
    happy = {**LOOP, "state_dir": str(state), "retrain_min_labels": "300"}
    with (
        serve_gateway(store, tmp_path, settings=happy) as (base, data),
        run_controller(store, tmp_path, settings=happy) as (loop, _),
        SteadyClient(data) as steady,
    ):
        # 1. In-distribution traffic for several windows: no alert.
        calm, _ = objects(3 * WINDOW, 0.0, 1)
        send(data, calm)
        wait_until(lambda: counter(loop, "gateway_drift_windows_total") >= 3, 90, "3 windows")
        assert counter(loop, "gateway_drift_alerts_total") == 0
        latest = httpx.get(f"{loop}/drift").json()
        assert latest["detected"] is False
        assert {c["method"] for c in latest["columns"]} == {"ks", "chisquare"}
        assert "<html" in httpx.get(f"{loop}/drift/report").text.lower()

        # 2. The population shifts (for the steady client too); ground truth comes back.
        steady.population, _ = objects(500, 1.0, 98)
        shifted, labels = objects(2000, 1.0, 2)
        ids = send(data, shifted)
        for start in range(0, len(ids), 500):
            pairs = zip(ids[start : start + 500], labels[start : start + 500], strict=True)
            chunk = [{"request_id": rid, "label": label} for rid, label in pairs]
            r = httpx.post(f"{data}/feedback", json={"feedback": chunk}, timeout=30)
            assert r.json() == {"recorded": len(chunk)}

        answered_by_v2: list[str] = []

        def on_v2() -> bool:
            answers = [
                httpx.post(f"{data}/predict", json={"application": o}, timeout=30).json()
                for o in shifted_calm[:6]
            ]
            answered_by_v2[:] = [a["request_id"] for a in answers]
            return all(a["model_version"] == "2" for a in answers)

        wait_until(on_v2, 240, "the retrained champion answering on every worker")

        def recorded() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = httpx.get(f"{loop}/retrains").json()["retrains"]
            return found if all(r["result"] for r in found) else []

        wait_until(lambda: bool(recorded()), 30, "the retrain's outcome")
        retrains = recorded()
        assert len(retrains) == 1, retrains
        exported = httpx.get(f"{base}/metrics").text + httpx.get(f"{loop}/metrics").text
        missing = [
            name
            for name in documented_metrics("### Loop metrics")
            if not metric_samples(exported, name)
        ]
        assert not missing, f"documented but not exported: {missing}"
        quality = metric_samples(exported, "gateway_live_quality")
        assert any('version="1"' in labels for labels in quality), quality
        assert counter(base, "gateway_drift_windows_total") == 0  # the replicas only answer

    assert steady.failures == [], steady.failures[:5]
    assert set(steady.versions) == {"1", "2"}
    (retrain,) = retrains
    assert retrain["result"] == "promoted"
    assert retrain["alert_id"].startswith("drift-loans-v1-")
    assert (state / "retrains" / f"{retrain['alert_id']}.log").stat().st_size > 0

    # 3. Lineage: v2 → parent v1's run → trigger = the alert.
    result = cli(store, "lineage", "loans@champion", "--json")
    lineage = json.loads(result.output)
    v1 = json.loads(cli(store, "lineage", "loans/1", "--json").output)
    assert lineage["version"] == "2"
    assert lineage["run"]["parent_run_id"] == v1["run"]["run_id"]
    assert lineage["run"]["trigger"] == retrain["alert_id"]
    reports = {p.name for p in (state / "reports").glob("*.html")}
    assert "latest.html" in reports

    # 4. Any answer, traced: v2's answer → v2's run → its parent → the alert and its window.
    traced = cli(
        store,
        "lineage",
        answered_by_v2[0],
        "--json",
        "--store",
        f"sqlite:///{state}/predictions.db",
    )
    assert traced.exit_code == 0, traced.output
    chain = json.loads(traced.output)
    assert chain["prediction"]["version"] == "2"
    assert chain["prediction"]["input"] == shifted_calm[0]
    assert chain["run"]["parent_run_id"] == v1["run"]["run_id"]
    assert chain["loop"]["retrain"]["alert_id"] == retrain["alert_id"]
    assert chain["loop"]["alert"]["source"] == "monitor"
    assert chain["loop"]["alert"]["detail"]["window"].startswith("loans-v1-")
    tree = cli(store, "lineage", answered_by_v2[0], "--store", f"sqlite:///{state}/predictions.db")
    assert chain["loop"]["alert"]["detail"]["window"] in tree.output


def alertmanager(status: str, fingerprint: str, group: str = '{}:{alertname="LoansDrift"}') -> Any:
    """The JSON body Alertmanager (webhook v4) posts to a receiver."""
    alert = {
        "status": status,
        "labels": {"alertname": "LoansDrift", "model": "loans", "severity": "page"},
        "annotations": {"summary": "loans inputs drifted"},
        "startsAt": "2026-11-27T09:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-27T09:10:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint,
    }
    return {
        "version": "4",
        "groupKey": group,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "gateway",
        "groupLabels": {"alertname": "LoansDrift"},
        "commonLabels": alert["labels"],
        "commonAnnotations": alert["annotations"],
        "externalURL": "http://alertmanager:9093",
        "alerts": [alert],
    }


def test_webhook_rejected_and_crashed_retrains_leave_the_champion_serving(
    store: str, tmp_path: Path, loans_data: Path
) -> None:
    settings = {
        **LOOP,
        "state_dir": str(tmp_path / "state"),
        "retrain_data": str(loans_data),
        "retrain_args": "--param epochs=0",  # an untrained challenger: worse than the champion
        "drift_enabled": "false",
    }
    with (
        serve_gateway(store, tmp_path, settings=settings) as (_, data),
        run_controller(store, tmp_path, settings=settings) as (loop, _),
        SteadyClient(data) as steady,
    ):
        token = {"authorization": "Bearer s3cret"}

        def hook(body: Any, headers: dict[str, str] = token) -> httpx.Response:
            return httpx.post(f"{loop}/alerts", json=body, headers=headers, timeout=30)

        def finished() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = httpx.get(f"{loop}/retrains").json()["retrains"]
            return [r for r in found if r["finished"] is not None]

        assert hook(alertmanager("firing", "f1"), {}).status_code == 401
        assert hook({"alerts": "nope"}).status_code == 422

        # Firing, then resolved, then the same firing alert again: exactly one retrain.
        first = hook(alertmanager("firing", "f1")).json()["alerts"][0]
        assert first["retrain"] == "started"
        assert hook(alertmanager("resolved", "f1")).json()["alerts"][0]["ignored"] == "resolved"
        assert hook(alertmanager("firing", "f1")).json()["alerts"][0]["accepted"] is False
        wait_until(lambda: len(finished()) == 1, 120, "the first retrain to finish")
        (rejected,) = finished()
        assert rejected["result"] == "rejected", rejected
        assert len(httpx.get(f"{loop}/retrains").json()["retrains"]) == 1

        # A retrain that crashes: the champion keeps serving, the next alert retrains again.
        crash = hook(alertmanager("firing", "f2")).json()["alerts"][0]
        assert crash["retrain"] == "started"
        time.sleep(1)
        os.kill(crash["pid"], signal.SIGKILL)
        wait_until(lambda: len(finished()) == 2, 60, "the crash to be recorded")
        crashed = next(r for r in finished() if r["alert_id"] == crash["trigger"])
        assert crashed["result"] == "failed"
        again = hook(alertmanager("firing", "f3")).json()["alerts"][0]
        assert again["retrain"] == "started"
        wait_until(lambda: len(finished()) == 3, 120, "the retrain after the crash")
        version = httpx.get(f"{data}/model").json()["model_version"]

    assert version == "1"
    assert steady.failures == [], steady.failures[:5]
    assert set(steady.versions) == {"1"}
    gate = json.loads(cli(store, "lineage", "loans/2", "--json").output)["run"]["gate"]
    assert gate["decision"] == "rejected"
