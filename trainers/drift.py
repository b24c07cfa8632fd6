"""Drift of a window of data against a model's reference sample, measured with Evidently.

What is compared is the pipeline's drift frame: its ``features`` (business fields and descriptors)
plus the model's answers (``prediction.*`` columns). Each column gets a pinned stat test by type —
Evidently's automatic choice switches from p-values to distances above 1,000 reference rows, so a
window would be judged differently as the reference grows. A column is categorical when it holds
strings or booleans or at most ``CATEGORICAL_MAX_VALUES`` distinct values in the reference.

Public API: the CLI's ``trainers drift`` and the serving gateway's monitor both call it.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient

from trainers import lineage
from trainers.contract import Pipeline, Predictor

PREDICTION_PREFIX = "prediction."
REFERENCE_SAMPLE = lineage.REFERENCE_SAMPLE  # logged with every model by training
CATEGORICAL_MAX_VALUES = 5


@dataclass(frozen=True)
class DriftOptions:
    num_method: str = "ks"
    """Stat test for numerical columns (Evidently's name; ``ks`` gives a p-value)."""
    cat_method: str = "chisquare"
    """Stat test for categorical columns."""
    threshold: float | None = None
    """Per-column threshold (None: the test's default, 0.05 for p-values)."""
    drift_share: float = 0.5
    """The window drifted when at least this share of columns drifted."""


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: str  # "num" or "cat"
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    columns: tuple[ColumnDrift, ...]
    share: float
    detected: bool
    current_rows: int
    reference_rows: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        drifted = [c.column for c in self.columns if c.drifted]
        verdict = "DRIFT" if self.detected else "no drift"
        return (
            f"{verdict}: {len(drifted)}/{len(self.columns)} columns drifted "
            f"(share {self.share:.2f})" + (f": {', '.join(drifted)}" if drifted else "")
        )


def drift_frame(
    pipeline: Pipeline[Any, Any, Any], predictor: Predictor[Any, Any], frame: pd.DataFrame
) -> pd.DataFrame:
    """The pipeline's features of ``frame``'s inputs beside the model's answers in ``frame``."""
    features = pipeline.features(frame, predictor).reset_index(drop=True)
    answers = [c for c in frame.columns if str(c).startswith(PREDICTION_PREFIX)]
    return pd.concat([features, frame[answers].reset_index(drop=True)], axis=1)


def column_kinds(reference: pd.DataFrame) -> dict[str, str]:
    kinds = {}
    for column in reference.columns:
        values = reference[column]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        few = values.nunique(dropna=True) <= CATEGORICAL_MAX_VALUES
        kinds[str(column)] = "num" if numeric and not few else "cat"
    return kinds


def compare(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    options: DriftOptions | None = None,
    html: Path | None = None,
) -> DriftResult:
    """Compare ``current`` with ``reference`` column by column; write the HTML report to
    ``html`` when given."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    options = options or DriftOptions()
    kinds = column_kinds(reference)
    columns = list(kinds)
    reference, current = _aligned(reference, kinds), _aligned(current[columns], kinds)
    definition = DataDefinition(
        numerical_columns=[c for c in columns if kinds[c] == "num"],
        categorical_columns=[c for c in columns if kinds[c] == "cat"],
    )
    method = {"num": options.num_method, "cat": options.cat_method}
    report = Report(
        [
            DriftedColumnsCount(
                columns=columns,
                num_method=options.num_method,
                cat_method=options.cat_method,
                drift_share=options.drift_share,
            ),
            *(
                ValueDrift(column=c, method=method[kinds[c]], threshold=options.threshold)
                for c in columns
            ),
        ]
    )
    snapshot = report.run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html))
    results = {m["config"].get("column"): m for m in snapshot.dict()["metrics"]}
    found = []
    for column in columns:
        kind = kinds[column]
        feature_type = "num" if kind == "num" else "cat"
        ref, cur = reference[column].dropna(), current[column].dropna()
        # The verdict of the same pinned test the report ran (its direction — p-value or
        # distance — is the test's own business).
        test = get_stattest(ref, cur, feature_type, method[kind])
        verdict = test(ref, cur, feature_type, options.threshold)
        score = float(results[column]["value"])
        found.append(
            ColumnDrift(
                column,
                kind,
                method[kind],
                score,
                float(verdict.actual_threshold),
                bool(verdict.drifted),
            )
        )
    drifted = sum(c.drifted for c in found)
    share = drifted / len(found) if found else 0.0
    return DriftResult(
        tuple(found),
        share,
        bool(found) and share >= options.drift_share,
        len(current),
        len(reference),
    )


def _aligned(frame: pd.DataFrame, kinds: dict[str, str]) -> pd.DataFrame:
    """Categorical columns as strings (missing stays missing), numbers as floats."""
    out = frame.copy()
    for column, kind in kinds.items():
        if kind == "cat":
            out[column] = out[column].map(lambda v: v if pd.isna(v) else str(v))
        else:
            out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)
    return out


def compare_snapshot(
    client: MlflowClient, run_id: str, data: Path, options: DriftOptions, html: Path
) -> DriftResult:
    """``trainers drift``: a snapshot (answered by the run's model) against the run's reference."""
    from trainers import pipelines
    from trainers.packaging import unwrap
    from trainers.snapshots import read_snapshot

    run = client.get_run(run_id)
    pipeline = pipelines.get(run.data.tags[lineage.PIPELINE])
    model = unwrap(mlflow.pyfunc.load_model(run.data.tags[lineage.MODEL_URI]))
    with tempfile.TemporaryDirectory(prefix="trainers-drift-") as tmp:
        reference = pd.read_parquet(client.download_artifacts(run_id, REFERENCE_SAMPLE, tmp))
    snapshot = read_snapshot(data, pipeline).frame.reset_index(drop=True)
    answers = model.predictor.predict_batch(list(pipeline.inputs_from_frame(snapshot)))
    answered = pd.concat(
        [snapshot, pd.DataFrame([a.model_dump() for a in answers]).add_prefix(PREDICTION_PREFIX)],
        axis=1,
    )
    return compare(
        drift_frame(pipeline, model.predictor, reference),
        drift_frame(pipeline, model.predictor, answered),
        options,
        html,
    )
