"""One training run, end to end: validate → fit → log everything → register → gate.

Everything that can be refused (pipeline, params, data) is checked before a run exists. Once
the run exists, any failure marks it FAILED and leaves no model version behind; aliases move
only after every artifact has been logged.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import Metric as MlflowMetric
from mlflow.entities import Param

from trainers import lineage, packaging, pipelines, registry
from trainers.contract import Pipeline
from trainers.errors import DataError, RegistryError
from trainers.snapshots import Snapshot, read_snapshot, write_snapshot
from trainers.tracking import ensure_experiment

REFERENCE_ROWS = 1000


class Reporter(Protocol):
    """Where a run reports progress (the CLI draws a progress bar)."""

    def start(self, pipeline: str, run_id: str, epochs: int) -> None: ...
    def epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...
    def stage(self, text: str) -> None: ...


class SilentReporter:
    def start(self, pipeline: str, run_id: str, epochs: int) -> None:
        pass

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def stage(self, text: str) -> None:
        pass


@dataclass(frozen=True)
class TrainRequest:
    pipeline: str
    data: Path | None = None
    params: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    trigger: str | None = None
    min_improvement: float = 0.0
    code_dir: Path = field(default_factory=Path.cwd)


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    pipeline: str
    version: str
    gate: registry.GateResult
    data_sha256: str
    test_score: float


def default_snapshot(pipeline: Pipeline[Any, Any, Any], directory: Path) -> Path:
    """The pipeline's seeded demo snapshot (written on first use)."""
    path = directory / pipeline.name / f"{pipeline.name}-default.parquet"
    if not path.exists():
        rows = pipeline.default_rows
        write_snapshot(
            pipeline.generate(rows, 0.0, 0),
            path,
            {"pipeline": pipeline.name, "rows": rows, "shift": 0.0, "seed": 0},
        )
    return path


def train(
    client: MlflowClient, request: TrainRequest, reporter: Reporter | None = None
) -> TrainResult:
    reporter = reporter or SilentReporter()
    pipeline = pipelines.get(request.pipeline)
    params = pipeline.parse_params(request.params)
    data_path = request.data or default_snapshot(pipeline, Path("data"))
    snapshot = read_snapshot(data_path, pipeline)
    train_df, valid_df, test_df = pipeline.split(snapshot.frame, params.seed)
    if min(len(train_df), len(valid_df), len(test_df)) == 0:
        raise DataError(f"{data_path}: {snapshot.rows} rows are too few to split 70/15/15")
    code = lineage.code_info(request.code_dir)
    env = lineage.environment()

    experiment_id = ensure_experiment(client, pipeline.name)
    tags = {
        lineage.PIPELINE: pipeline.name,
        lineage.SEED: str(params.seed),
        lineage.DATA_SOURCE: snapshot.source,
        lineage.DATA_SHA256: snapshot.sha256,
        lineage.DATA_ROWS: str(snapshot.rows),
        lineage.PIPELINE_SHA256: lineage.pipeline_source_sha256(pipeline),
        lineage.PYTHON: env["python"],
        **code,
    }
    if request.parent_run_id:
        tags[lineage.PARENT_RUN] = request.parent_run_id
    if request.trigger:
        tags[lineage.TRIGGER] = request.trigger
    run_name = f"{pipeline.name}-{'retrain' if request.parent_run_id else 'train'}"
    plan = _Plan(pipeline, params, snapshot, (train_df, valid_df, test_df), env, request)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        reporter.start(pipeline.name, run.info.run_id, params.epochs)
        return _run(client, run.info.run_id, plan, reporter)


@dataclass(frozen=True)
class _Plan:
    """Everything checked before a run exists."""

    pipeline: Pipeline[Any, Any, Any]
    params: Any
    snapshot: Snapshot
    splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]
    env: dict[str, Any]
    request: TrainRequest


def _run(client: MlflowClient, run_id: str, plan: _Plan, reporter: Reporter) -> TrainResult:
    pipeline, params, snapshot, env = plan.pipeline, plan.params, plan.snapshot, plan.env
    train_df, valid_df, test_df = plan.splits
    client.log_batch(
        run_id,
        params=[Param(k, str(v)) for k, v in params.model_dump().items()],
    )
    dataset = from_pandas(
        snapshot.frame,
        source=snapshot.source,
        name=Path(snapshot.source).name,
        targets=pipeline.target,
    )
    mlflow.log_input(dataset, context="training", tags={"sha256": snapshot.sha256})

    history: list[dict[str, float]] = []

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        history.append(metrics)
        client.log_batch(
            run_id, metrics=[MlflowMetric(k, v, _now_ms(), epoch) for k, v in metrics.items()]
        )
        reporter.epoch(epoch, metrics)

    predictor = pipeline.fit(train_df, valid_df, params, on_epoch)
    reporter.stage("evaluating on the holdout")
    test_score = pipeline.score(predictor, test_df)
    client.log_metric(run_id, f"test_{pipeline.metric.name}", test_score)
    client.log_figure(run_id, _curves(history, pipeline.name), "training/curves.png")

    reporter.stage("logging the model")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        predictor.save(work / "predictor")
        weights = lineage.sha256_tree(work / "predictor")
        _log_json(client, run_id, "lineage/environment.json", env)
        _log_json(client, run_id, "schemas/input.json", pipeline.Input.model_json_schema())
        _log_json(client, run_id, "schemas/output.json", pipeline.Output.model_json_schema())
        _log_json(client, run_id, "schemas/params.json", pipeline.Params.model_json_schema())
        reference = _reference_sample(pipeline, predictor, train_df, params.seed)
        reference.to_parquet(work / "reference.parquet", index=False)
        client.log_artifact(run_id, str(work / "reference.parquet"), "drift")

        info = packaging.log_pipeline_model(
            pipeline, work / "predictor", packaging.input_example(pipeline, train_df)
        )
        stored = client.get_logged_model(info.model_id).artifact_location
        model_dir = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=stored, dst_path=str(work / "logged"))
        )
        hashes = lineage.sha256_tree(model_dir)
    _log_json(client, run_id, lineage.ARTIFACT_HASHES, hashes)
    client.set_tag(run_id, lineage.WEIGHTS_SHA256, weights["model.safetensors"])
    client.set_tag(run_id, lineage.MANIFEST_SHA256, lineage.manifest_sha256(hashes))
    client.set_tag(run_id, lineage.MODEL_URI, info.model_uri)

    reporter.stage("registering and gating")
    version = _register(client, pipeline.name, info, run_id)
    try:
        champion = registry.alias_version(client, pipeline.name, registry.CHAMPION)
        result = registry.gate(pipeline, predictor, champion, test_df, plan.request.min_improvement)
        for key, value in result.tags().items():
            client.set_model_version_tag(pipeline.name, version, key, value)
            client.set_tag(run_id, key, value)
        client.log_metric(run_id, "gate_challenger_score", result.challenger_score)
        if result.champion_score is not None:
            client.log_metric(run_id, "gate_champion_score", result.champion_score)
        client.set_registered_model_alias(pipeline.name, registry.CHALLENGER, version)
        if result.decision == "promoted":
            registry.promote(client, pipeline.name, version, by=f"gate (run {run_id})")
    except BaseException:
        client.delete_model_version(pipeline.name, version)
        raise
    return TrainResult(run_id, pipeline.name, version, result, snapshot.sha256, test_score)


def retrain_request(
    client: MlflowClient,
    parent_run_id: str,
    data: Path | None,
    trigger: str | None,
    *,
    min_improvement: float = 0.0,
    overrides: dict[str, str] | None = None,
) -> TrainRequest:
    """The same pipeline, params and seed as ``parent_run_id``; new data and param overrides
    when given."""
    parent = lineage.read_run(client, parent_run_id, depth=0)
    if not parent.pipeline:
        raise RegistryError(f"run {parent_run_id} was not made by trainers (no pipeline tag)")
    pipeline = pipelines.get(parent.pipeline)
    params = {k: v for k, v in parent.params.items() if k in pipeline.Params.model_fields}
    params.update(overrides or {})
    source = data or Path(parent.tags[lineage.DATA_SOURCE])
    return TrainRequest(
        pipeline=parent.pipeline,
        data=source,
        params=params,
        parent_run_id=parent_run_id,
        trigger=trigger or "manual",
        min_improvement=min_improvement,
    )


def _register(client: MlflowClient, name: str, info: Any, run_id: str) -> str:
    """A new version of ``name`` from the logged model ``info``. A tracking server checks that
    a ``models:/m-…`` source belongs to the logged model named by ``model_id``."""
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = client.create_model_version(
        name, source=info.model_uri, run_id=run_id, model_id=info.model_id
    )
    return str(mv.version)


def _reference_sample(
    pipeline: Pipeline[Any, Any, Any], predictor: Any, train_df: pd.DataFrame, seed: int
) -> pd.DataFrame:
    """Training inputs (with label and the model's answers) that drift is measured against."""
    sample = train_df.sample(n=min(REFERENCE_ROWS, len(train_df)), random_state=seed)
    sample = sample.reset_index(drop=True)
    outputs = predictor.predict_batch(pipeline.inputs_from_frame(sample))
    answers = pd.DataFrame([o.model_dump() for o in outputs]).add_prefix("prediction.")
    return pd.concat([sample, answers], axis=1)


def _log_json(client: MlflowClient, run_id: str, path: str, payload: Any) -> None:
    client.log_text(run_id, json.dumps(payload, indent=2, sort_keys=True, default=str), path)


def _curves(history: list[dict[str, float]], title: str) -> Any:
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = list(range(1, len(history) + 1))
    for key in sorted({k for h in history for k in h}):
        ax = loss_ax if key.endswith("loss") else metric_ax
        ax.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=key)
    for ax, label in ((loss_ax, "loss"), (metric_ax, "validation metric")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if history:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no epochs run", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"{title}: training curves")
    fig.tight_layout()
    plt.close(fig)
    return fig


def _now_ms() -> int:
    return int(time.time() * 1000)
