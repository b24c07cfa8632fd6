"""The retrain path, run by the active loop controller: an alert → ``trainers retrain --from-run
<champion run>`` in its own process → the gate → the controller follows a promoted version at
once, and every replica within its alias poll interval.

Alerts come from the drift monitor or from Prometheus Alertmanager's webhook; each alert key is
recorded in the shared store first, so a key seen by any controller before starts nothing. One
retrain runs at a time: a retrain counts as running from its start until its outcome is
recorded in the store (the follow of a promoted version included), and the monitor raises no
alert meanwhile. A controller that takes over from one that died adopts the retrains left
running: it reads their outcome from their MLflow run (found by its trigger tag) instead of
from the process. A failed or rejected retrain leaves the champion serving; it is logged,
counted, recorded (and by the gate in MLflow; a run whose process died without ending it is
marked FAILED), and the next alert may retrain again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from gateway.metrics import GatewayMetrics
from gateway.model import LoadedModel
from gateway.settings import GatewaySettings
from gateway.store import Store

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger(__name__)
TRIGGER_TAG = "lineage.trigger"  # what `trainers` records as the reason of a run
MAX_FEEDBACK_ROWS = 50_000
HOST = socket.gethostname()
ADOPTED_POLL_S = 2.0
LOG_POLL_S = 0.5


class RetrainLoop:
    def __init__(
        self,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        store: Store,
        served: Callable[[], LoadedModel],
        follow: Callable[[], Awaitable[Any]],
        *,
        command: Sequence[str] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.served = served
        self.follow = follow
        """Called once a retrain promoted its version (the controller loads it at once)."""
        self.command = list(command) if command is not None else _trainers()
        """The retrain's command before ``retrain --from-run …`` (default: ``python -m
        trainers``)."""
        self.dir = settings.state_dir / "retrains"
        self._tasks: set[asyncio.Task[None]] = set()
        self._following: set[str] = set()  # retrains whose outcome this controller awaits
        self._starting = asyncio.Lock()

    async def stop(self) -> None:
        for task in list(self._tasks):  # the retrain process itself keeps running
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def busy(self, model: LoadedModel) -> bool:
        """Whether a retrain of ``model`` is running (by any controller)."""
        return bool(await asyncio.to_thread(self.store.running_retrains, model.name))

    async def adopt(self) -> None:
        """Follow the retrains a controller that stopped left running (called on taking over)."""
        model = self.served()
        for row in await asyncio.to_thread(self.store.running_retrains, model.name):
            if row["alert_id"] in self._following:
                continue
            log.warning(
                "retrain %s (pid %s on %s) was left running: following its MLflow run",
                row["alert_id"],
                row["pid"],
                row["host"],
            )
            self._track(self._adopted(row, model), row["alert_id"])

    def _track(self, work: Awaitable[None], trigger: str) -> None:
        self._following.add(trigger)

        async def run() -> None:
            try:
                await work
            finally:
                self._following.discard(trigger)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- intake -----------------------------------------------------------------------------
    async def alert(self, key: str, source: str, detail: dict[str, Any]) -> dict[str, Any]:
        """Start the retrain path for a new alert ``key``; a key seen before starts nothing."""
        model = self.served()
        if source == "monitor" and await self.busy(model):
            return {"alert": key, "accepted": False, "reason": "a retrain is running"}
        first = await asyncio.to_thread(self.store.first_alert, key, source, detail)
        if not first:
            return {"alert": key, "accepted": False, "reason": "already seen"}
        self.metrics.safely(lambda: self.metrics.drift_alerts.labels(model.name, source).inc())
        if not self.settings.retrain_on_alert:
            return {"alert": key, "accepted": True, "retrain": "disabled"}
        started = await self.retrain(_trigger_id(key), key, model)
        if started["retrain"] == "skipped":  # too few labels yet: a re-send may try again
            await asyncio.to_thread(self.store.forget_alert, key)
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
    async def retrain(self, trigger: str, key: str, model: LoadedModel) -> dict[str, Any]:
        async with self._starting:
            if await self.busy(model):
                log.warning("alert %s: a retrain is already running; not starting another", trigger)
                return {"retrain": "busy"}
            return await self._start(trigger, key, model)

    async def _start(self, trigger: str, key: str, model: LoadedModel) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            data = await asyncio.to_thread(self._data, model, trigger)
        except Exception as exc:
            log.warning("alert %s: no retrain (%s)", trigger, exc)
            self._count(model, "skipped")
            return {"retrain": "skipped", "reason": str(exc)}
        logfile = self.dir / f"{trigger}.log"
        command = [
            *self.command,
            "retrain",
            "--from-run",
            model.run_id,
            "--data",
            str(data),
            "--trigger",
            trigger,
            *shlex.split(self.settings.retrain_args),
        ]
        # The stores reach the retrain through MLflow's own variables, not its command line.
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.settings.tracking_uri}
        env["MLFLOW_REGISTRY_URI"] = self.settings.registry_uri
        try:
            # The retrain writes its log file itself: it must outlive a controller that dies
            # (whose pipe would break under it); the controller reads the file as it grows.
            with logfile.open("wb") as out:
                process = await asyncio.create_subprocess_exec(
                    *command, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env
                )
        except Exception as exc:
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
        try:
            await asyncio.to_thread(
                self.store.retrain_started,
                trigger,
                key,
                model=model.name,
                host=HOST,
                pid=process.pid,
                log=str(logfile),
            )
        except Exception:  # the retrain goes on; its outcome is still recorded in MLflow
            log.exception("alert %s: could not record the start of the retrain", trigger)
        self.metrics.safely(lambda: self.metrics.retrain_running.labels(model.name).set(1))
        self._track(self._outcome(process, trigger, model, logfile), trigger)
        return {"retrain": "started", "trigger": trigger, "pid": process.pid}

    def _data(self, model: LoadedModel, trigger: str) -> Path:
        """The snapshot to retrain on: the configured path, or the labelled production traffic
        exported from the prediction log."""
        if self.settings.retrain_data != "feedback":
            return Path(self.settings.retrain_data).resolve()
        rows = self.store.labelled(model.name, None, MAX_FEEDBACK_ROWS)
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

    async def _outcome(
        self,
        process: asyncio.subprocess.Process,
        trigger: str,
        model: LoadedModel,
        logfile: Path,
    ) -> None:
        """Echo the retrain's log as it grows, wait for it, then record what the gate decided
        (following a promoted version first)."""
        started = time.perf_counter()
        try:
            with logfile.open("rb") as written:
                code = None
                while code is None:
                    with contextlib.suppress(TimeoutError):
                        code = await asyncio.wait_for(process.wait(), LOG_POLL_S)
                    for line in written.read().decode(errors="replace").splitlines():
                        if line.strip():
                            log.info("retrain %s | %s", trigger, line.rstrip())
        finally:
            self.metrics.safely(lambda: self.metrics.retrain_running.labels(model.name).set(0))
        elapsed = time.perf_counter() - started
        if code != 0:
            detail = f"exit status {code} after {elapsed:.0f} s (log: {logfile})"
            log.error(
                "alert %s: retrain failed, %s; v%s keeps serving", trigger, detail, model.version
            )
            await asyncio.to_thread(self._end_run, model.name, trigger)
            await self._finished(trigger, model, "failed", detail, None)
            return
        await self._decided(trigger, model, f"after {elapsed:.0f} s")

    async def _decided(self, trigger: str, model: LoadedModel, when: str) -> None:
        """Record what the gate decided for the retrain ``trigger`` (following a promoted
        version first)."""
        decision, version = await asyncio.to_thread(self._decision, model.name, trigger)
        if decision == "promoted":
            try:
                followed = await self.follow()
            except Exception as exc:  # the replicas follow the alias on their own anyway
                log.exception("alert %s: could not follow the promoted version", trigger)
                followed = f"not yet ({exc})"
            detail = f"v{version} promoted {when}; the controller follows: {followed}"
        elif decision == "rejected":
            detail = f"v{version} rejected by the gate; v{model.version} keeps serving"
        else:
            detail = f"the retrain registered no version {when}; v{model.version} keeps serving"
        log.warning("alert %s: %s", trigger, detail)
        await self._finished(trigger, model, decision, detail, version)

    async def _adopted(self, row: dict[str, Any], model: LoadedModel) -> None:
        """Wait for a retrain another controller started, through its MLflow run."""
        trigger = str(row["alert_id"])
        while True:
            state = await asyncio.to_thread(self._run_state, model.name, trigger)
            if state == "FINISHED":
                await self._decided(trigger, model, "(adopted)")
                return
            gone = row["host"] == HOST and not _alive(row["pid"])
            late = time.time() - float(row["started"]) > self.settings.retrain_timeout_s
            if state in ("FAILED", "KILLED") or gone or late:
                why = (
                    f"run {state}"
                    if state in ("FAILED", "KILLED")
                    else ("its process is gone" if gone else "it did not finish in time")
                )
                log.error("alert %s: the adopted retrain failed (%s)", trigger, why)
                if gone:
                    await asyncio.to_thread(self._end_run, model.name, trigger)
                await self._finished(trigger, model, "failed", f"adopted: {why}", None)
                return
            await asyncio.sleep(ADOPTED_POLL_S)

    def _run_state(self, name: str, trigger: str) -> str | None:
        """The status of the MLflow run the retrain ``trigger`` made (None: none yet)."""
        run = _retrain_run(self.settings.mlflow(), name, trigger)
        return str(run.info.status) if run is not None else None

    def _end_run(self, name: str, trigger: str) -> None:
        """Mark FAILED the MLflow run of a retrain whose process died without ending it (kill
        -9, out of memory), which would otherwise stay RUNNING for ever. Best effort: the
        outcome recorded in the store is what the loop goes by."""
        try:
            client = self.settings.mlflow()
            run = _retrain_run(client, name, trigger)
            if run is not None and run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "FAILED")
                log.warning("alert %s: its run %s marked FAILED", trigger, run.info.run_id)
        except Exception as exc:
            log.warning("alert %s: could not mark its MLflow run FAILED: %s", trigger, exc)

    def _decision(self, name: str, trigger: str) -> tuple[str, str | None]:
        """What the gate decided for the version the retrain ``trigger`` registered."""

        client = self.settings.mlflow()
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
            await asyncio.to_thread(self.store.retrain_finished, trigger, result, detail, version)
        except Exception:
            log.exception("could not record the end of retrain %s", trigger)

    def _count(self, model: LoadedModel, result: str) -> None:
        self.metrics.safely(lambda: self.metrics.retrains.labels(model.name, result).inc())


def _retrain_run(client: MlflowClient, name: str, trigger: str) -> Run | None:
    """The MLflow run the retrain ``trigger`` made (None: none yet)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.`{TRIGGER_TAG}` = '{trigger}'", max_results=1
    )
    return runs[0] if runs else None


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def _trainers() -> list[str]:
    return [sys.executable, "-m", "trainers"]


def _trigger_id(key: str) -> str:
    """A readable, file-name-safe id for the alert key (Alertmanager's keys hold braces)."""
    if all(c.isalnum() or c in "-_." for c in key):
        return key
    import hashlib

    return "alertmanager-" + hashlib.sha256(key.encode()).hexdigest()[:12]
