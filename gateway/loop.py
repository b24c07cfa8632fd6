"""The retrain path: an alert → ``trainers retrain --from-run <champion run>`` in its own process →
the gate → a hot swap when the challenger was promoted.

Alerts come from the drift monitor or from Prometheus Alertmanager's webhook; each alert key is
recorded in the prediction log first, so a key seen by any worker before starts nothing. One
retrain runs at a time: the lock file is taken by the worker and handed to the retrain process
(its descriptor is inherited), so the lock lives as long as the retrain, and in the worker until
the outcome is recorded (the swap to a promoted version included) — a crash of the retrain
releases it once the failure is recorded, a crash of the worker does not while the retrain
runs. A failed or rejected retrain leaves the
champion serving; it is logged, counted, recorded in the prediction log (and by the gate in
MLflow), and the next alert may retrain again.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pandas as pd

from gateway.locks import release, try_lock
from gateway.metrics import GatewayMetrics
from gateway.model import LoadedModel
from gateway.predlog import PredictionLog
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
TRIGGER_TAG = "lineage.trigger"  # what `trainers` records as the reason of a run
MAX_FEEDBACK_ROWS = 50_000


class RetrainLoop:
    def __init__(
        self,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        predictions: PredictionLog,
        served: Callable[[], LoadedModel],
        swap: Callable[[], Awaitable[dict[str, Any]]],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.predictions = predictions
        self.served = served
        self.swap = swap
        self.dir = settings.state_dir / "retrains"
        self._tasks: set[asyncio.Task[None]] = set()

    async def stop(self) -> None:
        for task in list(self._tasks):  # the retrain process itself keeps running
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- intake -----------------------------------------------------------------------------
    async def alert(self, key: str, source: str, detail: dict[str, Any]) -> dict[str, Any]:
        """Start the retrain path for a new alert ``key``; a key seen before starts nothing."""
        model = self.served()
        first = await asyncio.to_thread(self.predictions.first_alert, key, source, detail)
        if not first:
            return {"alert": key, "accepted": False, "reason": "already seen"}
        self.metrics.safely(lambda: self.metrics.drift_alerts.labels(model.name, source).inc())
        if not self.settings.retrain_on_alert:
            return {"alert": key, "accepted": True, "retrain": "disabled"}
        started = await self.retrain(_trigger_id(key), model)
        if started["retrain"] == "skipped":  # too few labels yet: a re-send may try again
            await asyncio.to_thread(self.predictions.forget_alert, key)
        return {"alert": key, "accepted": True, **started}

    async def alertmanager(self, payload: Any) -> dict[str, Any]:
        """Alertmanager's webhook JSON: every firing alert, keyed by group, fingerprint and the
        time it started firing."""
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            raise ValueError("expected Alertmanager's webhook JSON with a list under 'alerts'")
        group = str(payload.get("groupKey", ""))
        results = []
        for alert in payload["alerts"]:
            if not isinstance(alert, dict):
                raise ValueError("every entry of 'alerts' must be an object")
            fingerprint = str(alert.get("fingerprint", ""))
            if alert.get("status") != "firing":
                results.append({"fingerprint": fingerprint, "ignored": alert.get("status")})
                continue
            labels = alert.get("labels", {})
            detail = {"group": group, "labels": labels, "startsAt": alert.get("startsAt")}
            # One firing episode of an alert: re-sends share startsAt, a new episode (after
            # `resolved`) has a new one and may retrain again.
            key = f"{group}|{fingerprint}|{alert.get('startsAt', '')}"
            result = await self.alert(key, "alertmanager", detail)
            results.append({"fingerprint": fingerprint, **result})
        return {"alerts": results}

    # -- the retrain ------------------------------------------------------------------------
    async def retrain(self, trigger: str, model: LoadedModel) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = try_lock(str(self.dir / "retrain.lock"))
        if lock is None:
            log.warning("alert %s: a retrain is already running; not starting another", trigger)
            return {"retrain": "busy"}
        try:
            data = await asyncio.to_thread(self._data, model, trigger)
        except Exception as exc:
            release(lock)
            log.warning("alert %s: no retrain (%s)", trigger, exc)
            self._count(model, "skipped")
            return {"retrain": "skipped", "reason": str(exc)}
        logfile = self.dir / f"{trigger}.log"
        command = [
            *_trainers(),
            "--tracking-uri",
            self.settings.tracking_uri,
            "retrain",
            "--from-run",
            model.run_id,
            "--data",
            str(data),
            "--trigger",
            trigger,
            *shlex.split(self.settings.retrain_args),
        ]
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=(lock,),  # the retrain holds the lock for as long as it runs
            )
        except Exception as exc:
            release(lock)
            log.exception("alert %s: could not start the retrain", trigger)
            self._count(model, "failed")
            return {"retrain": "failed", "reason": str(exc)}
        log.warning(
            "alert %s: retraining %s from run %s on %s (pid %d, log %s)",
            trigger,
            model.name,
            model.run_id,
            data,
            process.pid,
            logfile,
        )
        self.predictions.retrain_started(trigger, model.name, process.pid, str(logfile))
        self.metrics.safely(lambda: self.metrics.retrain_running.labels(model.name).set(1))
        task = asyncio.get_running_loop().create_task(
            self._follow(process, lock, trigger, model, logfile)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {"retrain": "started", "trigger": trigger, "pid": process.pid}

    def _data(self, model: LoadedModel, trigger: str) -> Path:
        """The snapshot to retrain on: the configured path, or the labelled production traffic
        exported from the prediction log."""
        if self.settings.retrain_data != "feedback":
            return Path(self.settings.retrain_data).resolve()
        rows = self.predictions.labelled(model.name, None, MAX_FEEDBACK_ROWS)
        if len(rows) < self.settings.retrain_min_labels:
            raise ValueError(
                f"{len(rows)} labelled objects, {self.settings.retrain_min_labels} needed "
                "(send ground truth to /feedback)"
            )
        frame = pd.DataFrame([r.input for r in rows]).reindex(
            columns=list(model.input_model.model_fields)
        )
        frame[model.pipeline.target] = [r.label for r in rows]
        path = self.dir / f"{trigger}.parquet"
        frame.to_parquet(path, index=False)
        return path.resolve()

    async def _follow(
        self,
        process: asyncio.subprocess.Process,
        lock: int,
        trigger: str,
        model: LoadedModel,
        logfile: Path,
    ) -> None:
        # The lock is held until the outcome is recorded, swap included: an alert that comes
        # while the promoted version is being swapped in must not retrain the old one again.
        try:
            await self._outcome(process, trigger, model, logfile)
        finally:
            release(lock)  # the retrain's own copy went when it exited

    async def _outcome(
        self,
        process: asyncio.subprocess.Process,
        trigger: str,
        model: LoadedModel,
        logfile: Path,
    ) -> None:
        """Stream the retrain's log, wait for it, then record what the gate decided (and swap
        to a promoted version)."""
        started = time.perf_counter()
        try:
            assert process.stdout is not None
            with logfile.open("wb") as out:
                async for line in process.stdout:
                    out.write(line)
                    out.flush()
                    text = line.decode(errors="replace").rstrip()
                    if text:
                        log.info("retrain %s | %s", trigger, text)
            code = await process.wait()
        finally:
            self.metrics.safely(lambda: self.metrics.retrain_running.labels(model.name).set(0))
        elapsed = time.perf_counter() - started
        if code != 0:
            detail = f"exit status {code} after {elapsed:.0f} s (log: {logfile})"
            log.error(
                "alert %s: retrain failed, %s; v%s keeps serving", trigger, detail, model.version
            )
            await self._finished(trigger, model, "failed", detail, None)
            return
        decision, version = await asyncio.to_thread(self._decision, model.name, trigger)
        if decision == "promoted":
            swapped = await self.swap()
            detail = f"v{version} promoted after {elapsed:.0f} s; swap: {swapped}"
            log.warning("alert %s: %s", trigger, detail)
        else:
            detail = f"v{version} rejected by the gate; v{model.version} keeps serving"
            log.warning("alert %s: %s", trigger, detail)
        await self._finished(trigger, model, decision, detail, version)

    def _decision(self, name: str, trigger: str) -> tuple[str, str | None]:
        """What the gate decided for the version the retrain ``trigger`` registered."""
        from mlflow import MlflowClient

        client = MlflowClient(self.settings.tracking_uri, self.settings.tracking_uri)
        for mv in sorted(
            client.search_model_versions(f"name = '{name}'"), key=lambda v: -int(v.version)
        ):
            run = client.get_run(str(mv.run_id))
            if run.data.tags.get(TRIGGER_TAG) == trigger:
                decision = run.data.tags.get("gate.decision", "")
                return ("promoted" if decision == "promoted" else "rejected"), str(mv.version)
        return "failed", None

    async def _finished(
        self, trigger: str, model: LoadedModel, result: str, detail: str, version: str | None
    ) -> None:
        self._count(model, result)
        try:
            await asyncio.to_thread(
                self.predictions.retrain_finished, trigger, result, detail, version
            )
        except Exception:
            log.exception("could not record the end of retrain %s", trigger)

    def _count(self, model: LoadedModel, result: str) -> None:
        self.metrics.safely(lambda: self.metrics.retrains.labels(model.name, result).inc())


def _trainers() -> list[str]:
    return [sys.executable, "-m", "trainers"]


def _trigger_id(key: str) -> str:
    """A readable, file-name-safe id for the alert key (Alertmanager's keys hold braces)."""
    if all(c.isalnum() or c in "-_." for c in key):
        return key
    import hashlib

    return "alertmanager-" + hashlib.sha256(key.encode()).hexdigest()[:12]
