"""The drift monitor on its own: logged rows become the frame drift is measured on, windows of
the served version are compared with its reference sample (Evidently, in a thread here), K
drifted windows in a row raise an alert, live quality follows the labels, and a drift process
that dies costs only its window. Real shared store (sqlite), real tracking store (sqlite, one per
module) holding each version's reference sample, a loans predictor fitted for two epochs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient

from gateway.lowprio import LowPriorityProcess
from gateway.metrics import GatewayMetrics
from gateway.model import LoadedModel
from gateway.monitor import DriftMonitor, rows_frame
from gateway.predlog import request_ids
from gateway.settings import GatewaySettings
from gateway.store import Row, Store
from tests import loopkit
from trainers import drift
from trainers.metrics import roc_auc
from trainers.pipelines.loans import PIPELINE, LoanApplication, LoanDecision, LoansParams

pytestmark = pytest.mark.anyio
NAME = "loans"
WINDOW = 200
REPO = Path(__file__).resolve().parents[2]
FIELDS = list(LoanApplication.model_fields)
ANSWERS = ["prediction.default_probability", "prediction.decision"]


@pytest.fixture(scope="module")
def predictor() -> Any:
    frame = PIPELINE.generate(1_000, 0.0, 0)
    train, valid, _ = PIPELINE.split(frame, 0)
    return PIPELINE.fit(train, valid, LoansParams(epochs=2), lambda *_: None)


def answered(predictor: Any, frame: pd.DataFrame) -> tuple[list[Any], list[Any]]:
    inputs = PIPELINE.inputs_from_frame(frame)
    return inputs, predictor.predict_batch(inputs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, predictor: Any) -> Path:
    """The reference sample training logs with a version: inputs, label and the answers."""
    frame = PIPELINE.generate(1_000, 0.0, 1)
    _, outputs = answered(predictor, frame)
    answers = pd.DataFrame([o.model_dump() for o in outputs]).add_prefix("prediction.")
    path = tmp_path_factory.mktemp("reference") / "reference.parquet"
    pd.concat([frame, answers], axis=1).to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    return loopkit.tracking_store(tmp_path_factory.mktemp("tracking"), NAME)


@dataclass
class Rig:
    """The monitor of one test, what it reads (shared store, served version) and what it
    raised."""

    monitor: DriftMonitor
    store: Store
    metrics: GatewayMetrics
    model: LoadedModel
    predictor: Any
    reports: Path
    alerts: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def log(self, rows: int, shift: float, seed: int, version: str | None = None) -> list[str]:
        """``rows`` objects of the population ``shift`` answered by ``version`` (default: the
        served one), as the prediction log writes them."""
        inputs, outputs = answered(self.predictor, PIPELINE.generate(rows, shift, seed))
        ids = request_ids(rows)
        columns = [
            c
            for rid, x, y in zip(ids, inputs, outputs, strict=True)
            for c in (rid, x.model_dump_json(), y.model_dump_json())
        ]
        self.store.append(1.0, NAME, version or self.model.version, columns)
        return ids

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def windows(self, result: str) -> float:
        return self.value("gateway_drift_windows_total", model=NAME, result=result)

    def errors(self, stage: str) -> float:
        return self.value("gateway_monitor_errors_total", stage=stage)

    def latest(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads((self.reports / "latest.json").read_text())
        return found


def version_run(client: MlflowClient, reference: Path) -> str:
    """A version's run, with the reference sample its training logged."""
    experiment = client.get_experiment_by_name(NAME)
    assert experiment is not None
    run_id = str(client.create_run(experiment.experiment_id).info.run_id)
    client.log_artifact(run_id, str(reference), Path(drift.REFERENCE_SAMPLE).parent.name)
    return run_id


@pytest.fixture
def make(
    tmp_path: Path, tracking: MlflowClient, reference: Path, predictor: Any
) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []
    pools: list[ThreadPoolExecutor] = []

    def rig(threads: bool = True, **overrides: Any) -> Rig:
        options = {
            "state_dir": tmp_path / "state",
            "drift_window": WINDOW,
            "drift_alert_windows": 2,
            "drift_report_interval_s": 3600,
            **overrides,
        }
        settings = GatewaySettings(tracking_uri=tracking.tracking_uri, **options)
        run_id = version_run(tracking, reference)
        model = LoadedModel(
            NAME, "1", run_id, "application", LoanApplication, LoanDecision, predictor, PIPELINE
        )
        store, metrics = Store(settings.shared_store), GatewayMetrics()
        pool = ThreadPoolExecutor(1) if threads else None
        pools.extend([pool] if pool is not None else [])

        async def alert(key: str, source: str, detail: dict[str, Any]) -> dict[str, Any]:
            this.alerts.append((key, source, detail))
            return {"alert": key, "accepted": True}

        monitor = DriftMonitor(settings, metrics, store, lambda: this.model, alert, executor=pool)
        this = Rig(monitor, store, metrics, model, predictor, settings.state_dir / "reports")
        made.append(this)
        return this

    yield rig
    for this in made:
        this.store.close()
    for pool in pools:
        pool.shutdown()


# -- the frame drift is measured on -------------------------------------------------------------
def test_rows_frame_puts_the_inputs_in_field_order_beside_the_prefixed_answers() -> None:
    model = LoadedModel(
        NAME, "1", "run", "application", LoanApplication, LoanDecision, None, PIPELINE
    )
    application = {
        "purpose": "car",  # keys in any order, as a client sent them
        "income": 52_000.0,
        "age": 40,
        "loan_amount": 9_000.0,
        "term_months": 36,
        "employment_status": "employed",
        "existing_debt": None,
        "credit_history_years": 12.5,
        "unknown": "dropped",
    }
    rows = [
        Row(7, "a", "1", application, {"default_probability": 0.1, "decision": "review"}),
        Row(
            8,
            "b",
            "1",
            {**application, "age": 30, "existing_debt": 3_000.0},
            {"default_probability": 0.4, "decision": "decline"},
        ),
    ]

    frame = rows_frame(model, rows)

    assert list(frame.columns) == [*FIELDS, *ANSWERS]
    assert frame["age"].tolist() == [40, 30]
    assert pd.isna(frame["existing_debt"][0])  # a field not sent is missing, not dropped
    assert frame["existing_debt"][1] == 3_000.0
    assert frame["prediction.decision"].tolist() == ["review", "decline"]
    assert frame["prediction.default_probability"].tolist() == [0.1, 0.4]


async def test_logged_rows_come_back_as_the_frame_that_was_answered(
    make: Callable[..., Rig],
) -> None:
    rig = make()
    population = PIPELINE.generate(WINDOW, 0.5, 3)
    rig.log(WINDOW, 0.5, 3)
    rows = rig.store.window(NAME, "1", 0, WINDOW)

    frame = rows_frame(rig.model, rows)

    pd.testing.assert_frame_equal(frame[FIELDS], population[FIELDS], check_dtype=False)
    _, outputs = answered(rig.predictor, population)
    assert frame["prediction.decision"].tolist() == [o.decision for o in outputs]
    measured = drift.drift_frame(PIPELINE, rig.predictor, frame)
    assert list(measured.columns) == [*FIELDS, "debt_to_income", *ANSWERS]


# -- windows -------------------------------------------------------------------------------------
async def test_a_window_like_the_reference_is_clean_and_a_shifted_one_drifts(
    make: Callable[..., Rig], tracking: MlflowClient
) -> None:
    rig = make()
    rig.log(WINDOW - 1, 0.0, 11)
    await rig.monitor.check()  # the window is not full yet
    assert not (rig.reports / "latest.json").exists()

    rig.log(1, 0.0, 12)
    await rig.monitor.check()
    clean = rig.latest()
    assert (clean["window"], clean["detected"]) == ("loans-v1-00001", False)
    assert (clean["current_rows"], clean["reference_rows"]) == (WINDOW, 1_000)
    assert clean["share"] < 0.5
    assert {c["column"] for c in clean["columns"]} == {*FIELDS, "debt_to_income", *ANSWERS}
    assert clean["report"] == "loans-v1-00001.html"  # a version's first window is rendered
    assert rig.windows("clean") == 1
    assert rig.value("gateway_drift_detected", model=NAME) == 0
    assert rig.value("gateway_drift_share", model=NAME, version="1") == clean["share"]

    rig.log(WINDOW, 0.0, 13)
    await rig.monitor.check()
    second = rig.latest()
    assert (second["window"], second["detected"], second["report"]) == (
        "loans-v1-00002",
        False,
        None,  # a clean window renders no report until one is due
    )
    assert (rig.reports / "loans-v1-00002.json").exists()

    rig.log(WINDOW, 1.0, 14)
    await rig.monitor.check()
    shifted = rig.latest()
    assert (shifted["window"], shifted["detected"]) == ("loans-v1-00003", True)
    assert shifted["share"] >= 0.5
    drifted = {c["column"] for c in shifted["columns"] if c["drifted"]}
    assert {"income", "purpose", "prediction.default_probability"} <= drifted
    assert shifted["report"] == "loans-v1-00003.html"  # every drifted window is rendered
    assert "<html" in (rig.reports / "latest.html").read_text().lower()
    assert rig.windows("drifted") == 1
    assert rig.value("gateway_drift_detected", model=NAME) == 1
    income = next(c for c in shifted["columns"] if c["column"] == "income")
    score = rig.value("gateway_drift_score", model=NAME, column="income", method="ks")
    assert score == income["score"] < 0.05

    # The first window's report and every drifted one's go into the version's run.
    logged = tracking.list_artifacts(rig.model.run_id, "drift/reports")
    assert sorted(Path(a.path).name for a in logged) == [
        "loans-v1-00001.html",
        "loans-v1-00003.html",
    ]
    assert rig.alerts == []  # one drifted window of the two it takes
    assert sum(rig.errors(s) for s in ("drift", "quality", "report", "mlflow")) == 0


async def test_a_check_takes_the_newest_window_and_skips_the_rows_before_it(
    make: Callable[..., Rig],
) -> None:
    rig = make()
    rig.log(WINDOW, 0.0, 21)
    rig.log(WINDOW, 1.0, 22)  # two windows' worth arrived between two checks
    rig.log(WINDOW, 0.0, 23, version="2")  # and another version's traffic, the newest

    await rig.monitor.check()
    assert (rig.latest()["window"], rig.latest()["detected"]) == ("loans-v1-00001", True)
    await rig.monitor.check()  # nothing new of v1: the older rows are not evaluated later
    assert rig.windows("clean") + rig.windows("drifted") == 1


async def test_k_drifted_windows_in_a_row_raise_an_alert(make: Callable[..., Rig]) -> None:
    rig = make(drift_alert_windows=2)
    rig.monitor.render = loopkit.sketch  # reports are not what this is about

    verdicts, shares, raised = [], [], []
    for seed, shift in enumerate([1.0, 0.0, 1.0, 1.0, 1.0, 1.0], start=30):
        rig.log(WINDOW, shift, seed)
        await rig.monitor.check()
        verdicts.append(rig.latest()["detected"])
        shares.append(rig.latest()["share"])
        raised.append(len(rig.alerts))

    assert verdicts == [True, False, True, True, True, True]
    assert raised == [0, 0, 0, 1, 1, 2]  # the count starts again after a clean window, an alert
    (first_key, source, detail), (_, _, second) = rig.alerts
    assert re.fullmatch(r"drift-loans-v1-\d+", first_key)
    assert source == "monitor"
    assert detail["window"] == "loans-v1-00004"
    assert detail["run_id"] == rig.model.run_id
    assert detail["share"] == shares[3]
    assert second["window"] == "loans-v1-00006"


async def test_a_new_served_version_starts_its_own_windows_and_count(
    make: Callable[..., Rig], reference: Path
) -> None:
    rig = make(drift_alert_windows=2)
    rig.monitor.render = loopkit.sketch
    rig.log(WINDOW, 1.0, 40)
    await rig.monitor.check()
    assert rig.latest()["detected"]

    # v2 comes with its reference sample (a bundled version), not through the run.
    rig.model = LoadedModel(
        NAME,
        "2",
        "no-such-run",
        "application",
        LoanApplication,
        LoanDecision,
        rig.predictor,
        PIPELINE,
        reference=reference,
    )
    rig.log(WINDOW, 1.0, 41)
    await rig.monitor.check()

    latest = rig.latest()
    assert (latest["window"], latest["model_version"], latest["detected"]) == (
        "loans-v2-00001",
        "2",
        True,
    )
    assert rig.alerts == []  # v1's drifted window does not count for v2
    assert rig.errors("drift") == 0


async def test_a_report_that_fails_to_render_costs_only_the_report(
    make: Callable[..., Rig],
) -> None:
    rig = make()

    def broken(*args: Any) -> Any:
        raise RuntimeError("no report today")

    rig.monitor.render = broken
    rig.log(WINDOW, 0.0, 50)
    await rig.monitor.check()

    assert rig.latest()["report"] is None
    assert rig.windows("clean") == 1
    assert rig.errors("report") == 1
    assert not (rig.reports / "latest.html").exists()


# -- the drift process -------------------------------------------------------------------------
async def test_a_drift_process_that_dies_loses_its_window_counts_it_and_the_monitor_goes_on(
    make: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The low-priority process imports the stand-ins from this checkout.
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    rig = make(threads=False)  # the monitor's own process, started on first use
    rig.monitor.compare = loopkit.hang
    rig.log(WINDOW, 0.0, 60)

    check = asyncio.get_running_loop().create_task(rig.monitor.check())
    await loopkit.eventually(
        lambda: isinstance(rig.monitor.executor, LowPriorityProcess) and rig.monitor.executor.pid,
        20,
        "the drift process",
    )
    assert isinstance(rig.monitor.executor, LowPriorityProcess)
    killed = rig.monitor.executor.pid
    assert killed is not None
    os.kill(killed, signal.SIGKILL)  # out of memory, say
    await asyncio.wait_for(check, 20)  # the round ends; nothing is raised

    assert rig.errors("drift") == 1
    assert rig.windows("clean") + rig.windows("drifted") == 0
    assert not (rig.reports / "latest.json").exists()

    rig.monitor.compare, rig.monitor.render = loopkit.quiet, loopkit.sketch
    rig.log(WINDOW, 0.0, 61)
    await rig.monitor.check()
    assert rig.windows("clean") == 1
    assert rig.latest()["window"] == "loans-v1-00002"  # the lost window kept its number
    assert isinstance(rig.monitor.executor, LowPriorityProcess)
    again = rig.monitor.executor.pid
    assert again not in (None, killed)
    await rig.monitor.stop()
    assert again is not None
    assert not loopkit.alive(again)


# -- live quality ------------------------------------------------------------------------------
async def test_live_quality_is_the_pipelines_metric_over_the_latest_labelled_objects(
    make: Callable[..., Rig],
) -> None:
    rig = make(quality_window=40)
    population = PIPELINE.generate(60, 0.0, 70)
    ids = rig.log(60, 0.0, 70)
    labels = population[PIPELINE.target].tolist()
    others = rig.log(20, 0.0, 71, version="2")

    rig.store.record_feedback(list(zip(ids[:9], labels[:9], strict=True)))
    await rig.monitor.check()
    assert rig.value("gateway_labelled_objects", model=NAME, version="1") == 0  # under 10

    rig.store.record_feedback(list(zip(ids[9:], labels[9:], strict=True)))
    rig.store.record_feedback([(rid, i % 2) for i, rid in enumerate(others)])  # the newest
    await rig.monitor.check()

    _, outputs = answered(rig.predictor, population)
    latest = slice(20, 60)  # the 40 of v1 labelled last
    expected = roc_auc(labels[latest], [o.default_probability for o in outputs[latest]])
    auc = rig.value("gateway_live_quality", model=NAME, version="1", metric="auc")
    assert auc == pytest.approx(expected)
    assert rig.value("gateway_labelled_objects", model=NAME, version="1") == 40
    assert rig.errors("quality") == 0
