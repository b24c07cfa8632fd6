"""The monitoring side never fails a prediction: a failing drift computation (in the loop
controller), a full prediction log buffer and bad feedback (in the replica) are counted and
refused, while answers keep coming."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from gateway.controller import Controller
from gateway.controller import create_app as controller_app
from gateway.core import GatewayCore
from gateway.http import create_app
from gateway.loader import load
from gateway.metrics import GatewayMetrics
from tests.conftest import FAST_LOANS, train_ok
from tests.helpers import in_process_settings, metric_samples, wait_until
from tests.traffic import APPLICATION, loan_variants
from trainers.drift import compare


def boom(*args: Any) -> Any:
    raise RuntimeError("injected failure in the drift computation")


def _metric(client: TestClient, name: str, labels: str = "") -> float:
    return metric_samples(client.get("/metrics").text, name).get(labels, 0.0)


def test_monitor_failures_never_fail_a_prediction(
    store: str, loans_data: Path, tmp_path: Path
) -> None:
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    settings = in_process_settings(
        store,
        state_dir=tmp_path / "state",
        drift_window=20,
        drift_interval_s=3600,  # rounds are run by hand below
        log_buffer=30,
    )
    core = GatewayCore(load(settings), settings, GatewayMetrics())
    controller = Controller(settings, GatewayMetrics())
    with (
        TestClient(create_app(lambda: core)) as client,
        TestClient(controller_app(controller)) as loop,
    ):
        wait_until(lambda: controller.active, 30, "the controller to take the lease")
        monitor = controller.monitor
        assert monitor is not None
        assert core.predictions is not None
        monitor.compare = boom
        monitor.executor = ThreadPoolExecutor(1)
        objects = loan_variants(25)
        answered = client.post("/predict/bulk", json={"applications": objects})
        assert answered.status_code == 200
        ids = answered.json()["request_ids"]
        assert len(set(ids)) == 25
        core.predictions.flush()

        loop.portal.call(monitor.check)  # type: ignore[union-attr]
        assert _metric(loop, "gateway_monitor_errors_total", '{stage="drift"}') == 1
        assert client.post("/predict", json={"application": APPLICATION}).status_code == 200
        assert loop.get("/drift").status_code == 404  # no window was evaluated

        # A report that cannot be rendered costs only the report: the window still counts.
        monitor.compare = compare  # the real computation again
        monitor.render = boom
        more = client.post("/predict/bulk", json={"applications": loan_variants(20)})
        assert more.status_code == 200
        core.predictions.flush()
        loop.portal.call(monitor.check)  # type: ignore[union-attr]
        assert _metric(loop, "gateway_monitor_errors_total", '{stage="report"}') == 1
        latest = loop.get("/drift").json()
        assert latest["report"] is None
        assert latest["current_rows"] == 20
        windows = sum(
            _metric(loop, "gateway_drift_windows_total", f'{{model="loans",result="{result}"}}')
            for result in ("clean", "drifted")
        )
        assert windows == 1

        # A full buffer drops samples (counted) and still answers.
        core.predictions.flush()
        flood = client.post("/predict/bulk", json={"applications": loan_variants(40)})
        assert flood.status_code == 200
        assert _metric(client, "gateway_monitor_samples_dropped_total") == 10

        # Feedback: recorded for good labels, 422 naming the field for bad ones.
        good = client.post("/feedback", json={"request_id": ids[0], "label": 1})
        assert good.json() == {"recorded": 1}
        bad = client.post(
            "/feedback", json={"feedback": [{"request_id": ids[1], "label": "maybe"}]}
        )
        assert bad.status_code == 422
        assert "feedback.0.label" in bad.text
        assert "a finite number or a boolean" in bad.text
        missing = client.post("/feedback", json={"request_id": ids[1]})
        assert missing.status_code == 422
        assert "request_id and label" in missing.text
        assert _metric(client, "gateway_feedback_total", '{result="recorded"}') == 1
        assert _metric(client, "gateway_feedback_total", '{result="refused"}') == 2
        (labelled,) = core.predictions.store.labelled("loans", None, 10)
        assert labelled.request_id == ids[0]
        assert labelled.label == 1
        assert labelled.input["income"] == objects[0]["income"]
