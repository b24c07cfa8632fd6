"""The drift monitor: run by the active loop controller, reading windows of live traffic from the
shared store — so it sees every replica's traffic — and comparing each with the reference sample
logged with the served model (``trainers.drift``, Evidently with pinned tests).

Evidently runs in a separate process (it takes seconds to import and holds the GIL while it
computes), so the controller never waits on it. Each window becomes gauges, an HTML report (kept
under ``state_dir/reports``, served at the controller's ``/drift/report`` and logged to the
model's MLflow run) and a log line; K drifted windows in a row raise an alert (none while a
retrain runs). The live quality gauge is computed over the latest labelled objects. Every failure
here is logged and counted, never raised.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gateway.lowprio import LowPriorityProcess
from gateway.metrics import GatewayMetrics
from gateway.model import LoadedModel
from gateway.settings import GatewaySettings
from gateway.store import Row, Store
from trainers import drift

log = logging.getLogger(__name__)
PREDICTION_PREFIX = "prediction."
Alert = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


def rows_frame(model: LoadedModel, rows: list[Row]) -> pd.DataFrame:
    """Logged objects as a frame of input columns and ``prediction.*`` answer columns."""
    inputs = pd.DataFrame([r.input for r in rows]).reindex(
        columns=list(model.input_model.model_fields)
    )
    answers = pd.DataFrame([r.output for r in rows]).add_prefix(PREDICTION_PREFIX)
    return pd.concat([inputs, answers], axis=1)


@dataclass
class _Watched:
    """The served version the monitor is following, with its reference drift frame."""

    version: str
    reference: pd.DataFrame
    after: int = 0  # the last prediction-log row already evaluated
    drifted_in_a_row: int = 0
    windows: int = 0
    rendered_at: float = 0.0  # when the last HTML report was rendered (monotonic)


class DriftMonitor:
    def __init__(
        self,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        store: Store,
        served: Callable[[], LoadedModel],
        alert: Alert,
        *,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.served = served
        self.alert = alert
        self.reports = settings.state_dir / "reports"
        self.compare: Callable[..., Any] = drift.compare
        """The drift computation (default: ``trainers.drift.compare``)."""
        self.render: Callable[..., Any] = drift.render
        """The HTML report of a window (``trainers.drift.render``)."""
        self.executor = executor
        """Where it runs (default: a separate process, started on first use)."""
        self._task: asyncio.Task[None] | None = None
        self._watched: _Watched | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="drift-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None

    async def _run(self) -> None:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        while True:
            await asyncio.sleep(self.settings.drift_interval_s)
            await self.check()

    async def check(self) -> None:
        """One round: the live quality gauge, then a drift window if one is full."""
        model = self.served()
        try:
            await asyncio.to_thread(self._quality, model)
        except Exception:
            log.exception("live quality of %s v%s failed", model.name, model.version)
            self.metrics.safely(lambda: self.metrics.monitor_errors.labels("quality").inc())
        try:
            await self._window(model)
        except Exception as exc:
            log.exception("drift check of %s v%s failed: %s", model.name, model.version, exc)
            self.metrics.safely(lambda: self.metrics.monitor_errors.labels("drift").inc())

    # -- drift ------------------------------------------------------------------------------
    async def _window(self, model: LoadedModel) -> None:
        watched = self._watched
        if watched is None or watched.version != model.version:
            reference = await asyncio.to_thread(self._reference, model)
            watched = self._watched = _Watched(model.version, reference)
            self.metrics.safely(lambda: self.metrics.drift_detected.labels(model.name).set(0))
        size = self.settings.drift_window
        rows = await asyncio.to_thread(
            self.store.window, model.name, model.version, watched.after, size
        )
        if not rows:  # the window is not full yet
            return
        watched.after = rows[-1].rowid
        current = await asyncio.to_thread(self._drift_frame, model, rows_frame(model, rows))
        watched.windows += 1
        name = f"{model.name}-v{model.version}-{watched.windows:05d}"
        loop = asyncio.get_running_loop()
        options = self._options()
        result = await loop.run_in_executor(
            self._pool(), self.compare, watched.reference, current, options, None
        )
        html: Path | None = None
        due = time.monotonic() - watched.rendered_at >= self.settings.drift_report_interval_s
        if watched.windows == 1 or result.detected or due:
            html = self.reports / f"{name}.html"
            try:
                await loop.run_in_executor(
                    self._pool(), self.render, watched.reference, current, options, html
                )
                watched.rendered_at = time.monotonic()
            except Exception:  # the window's verdict still counts, without its report
                log.exception("could not render the drift report %s", html)
                self.metrics.safely(lambda: self.metrics.monitor_errors.labels("report").inc())
                html = None
        self._publish(model, watched, result, html, name)
        watched.drifted_in_a_row = watched.drifted_in_a_row + 1 if result.detected else 0
        if watched.drifted_in_a_row >= self.settings.drift_alert_windows:
            watched.drifted_in_a_row = 0
            alert_id = f"drift-{model.name}-v{model.version}-{int(time.time())}"
            log.warning(
                "%s v%s: %d drifted windows in a row → alert %s",
                model.name,
                model.version,
                self.settings.drift_alert_windows,
                alert_id,
            )
            detail = {"window": name, "share": result.share, "run_id": model.run_id}
            await self.alert(alert_id, "monitor", detail)

    def _reference(self, model: LoadedModel) -> pd.DataFrame:
        if model.reference is not None:
            return self._drift_frame(model, pd.read_parquet(model.reference))
        client = self.settings.mlflow()
        with tempfile.TemporaryDirectory(prefix="gateway-reference-") as tmp:
            path = client.download_artifacts(model.run_id, drift.REFERENCE_SAMPLE, tmp)
            frame = pd.read_parquet(path)
        return self._drift_frame(model, frame)

    def _drift_frame(self, model: LoadedModel, frame: pd.DataFrame) -> pd.DataFrame:
        return drift.drift_frame(model.pipeline, model.predictor, frame)

    def _options(self) -> drift.DriftOptions:
        s = self.settings
        return drift.DriftOptions(
            s.drift_num_method, s.drift_cat_method, s.drift_threshold, s.drift_share
        )

    def _pool(self) -> Executor:
        if self.executor is None:  # started on first use: the import costs seconds, once
            self.executor = LowPriorityProcess()
        return self.executor

    def _publish(
        self, model: LoadedModel, watched: _Watched, result: Any, html: Path | None, name: str
    ) -> None:
        m = self.metrics
        m.safely(lambda: m.drift_share.labels(model.name, model.version).set(result.share))
        m.safely(lambda: m.drift_detected.labels(model.name).set(int(result.detected)))
        outcome = "drifted" if result.detected else "clean"
        m.safely(lambda: m.drift_windows.labels(model.name, outcome).inc())
        for column in result.columns:
            score = m.drift_score.labels(model.name, column.column, column.method)
            m.safely(functools.partial(score.set, column.score))
        log.info("%s v%s window %s: %s", model.name, model.version, name, result.describe())
        try:
            summary = {
                "model_name": model.name,
                "model_version": model.version,
                "run_id": model.run_id,
                "window": name,
                "evaluated_at": time.time(),
                "report": html.name if html is not None else None,
                **result.to_json(),
            }
            self.reports.mkdir(parents=True, exist_ok=True)
            (self.reports / f"{name}.json").write_text(json.dumps(summary, indent=1))
            if html is not None:
                shutil.copyfile(html, self.reports / "latest.html")
            (self.reports / "latest.json").write_text(json.dumps(summary, indent=1))
        except Exception:
            log.exception("could not keep the drift report %s", html)
            m.safely(lambda: m.monitor_errors.labels("report").inc())
        if html is not None and (result.detected or watched.windows == 1):
            self._log_to_mlflow(model, html)

    def _log_to_mlflow(self, model: LoadedModel, html: Path) -> None:
        """Log the report into the served model's run (the first window and every drifted one,
        so the run does not collect thousands of clean reports); a tracking store out of reach
        (a bento serving its bundled model) costs only this copy of the report."""
        try:
            self.settings.mlflow().log_artifact(model.run_id, str(html), "drift/reports")
        except Exception as exc:
            log.warning("drift report %s not logged to MLflow: %s", html.name, exc)
            self.metrics.safely(lambda: self.metrics.monitor_errors.labels("mlflow").inc())

    # -- live quality -------------------------------------------------------------------------
    def _quality(self, model: LoadedModel) -> None:
        rows = self.store.labelled(model.name, model.version, self.settings.quality_window)
        if len(rows) < 10:
            return
        pipeline = model.pipeline
        frame = rows_frame(model, rows)
        frame[pipeline.target] = [r.label for r in rows]
        outputs = [model.output_model.model_validate(r.output) for r in rows]
        try:
            score = float(pipeline.evaluate(frame, outputs))
        except ValueError as exc:  # e.g. AUC over labels of one class
            log.info(
                "live quality of %s v%s not computable yet: %s", model.name, model.version, exc
            )
            return
        metric = pipeline.metric.name
        m = self.metrics
        m.safely(lambda: m.live_quality.labels(model.name, model.version, metric).set(score))
        m.safely(lambda: m.labelled.labels(model.name, model.version).set(len(rows)))
