"""Drift of a window of data against a model's reference sample, measured with Evidently.

What is compared is the pipeline's drift frame: its ``features`` (business fields and descriptors)
plus the model's answers (``prediction.*`` columns). Each column gets a pinned stat test by type —
Evidently's automatic choice switches from p-values to distances above 1,000 reference rows, so a
window would be judged differently as the reference grows. A column is categorical when it holds
strings or booleans or at most ``CATEGORICAL_MAX_VALUES`` distinct values in the reference.

Public API: the CLI's ``trainers drift`` and the serving gateway's monitor both call it. The
module imports only pandas at load time: the monitor's drift process imports it, and MLflow and
torch would add seconds of CPU there for nothing.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from trainers.contract import Pipeline, Predictor

PREDICTION_PREFIX = "prediction."
REFERENCE_SAMPLE = "drift/reference.parquet"  # logged with every model by training
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
    """Compare ``current`` with ``reference`` column by column with Evidently's pinned stat
    tests; with ``html``, also write Evidently's report of the same tests there. (The report
    costs about fifteen times the tests: the monitor asks for it only now and then.)"""
    from evidently.legacy.calculations.stattests.registry import get_stattest

    options = options or DriftOptions()
    reference, current, kinds = _prepared(reference, current)
    method = {"num": options.num_method, "cat": options.cat_method}
    found = []
    for column, kind in kinds.items():
        ref, cur = reference[column].dropna(), current[column].dropna()
        test = get_stattest(ref, cur, kind, method[kind])
        verdict = test(ref, cur, kind, options.threshold)
        found.append(
            ColumnDrift(
                column,
                kind,
                method[kind],
                float(verdict.drift_score),
                float(verdict.actual_threshold),
                bool(verdict.drifted),
            )
        )
    if html is not None:
        _save(reference, current, options, kinds, html)
    drifted = sum(c.drifted for c in found)
    share = drifted / len(found) if found else 0.0
    return DriftResult(
        tuple(found),
        share,
        bool(found) and share >= options.drift_share,
        len(current),
        len(reference),
    )


def render(
    reference: pd.DataFrame, current: pd.DataFrame, options: DriftOptions, html: Path
) -> Path:
    """Only the HTML report of ``compare`` (for a window whose verdicts are known)."""
    reference, current, kinds = _prepared(reference, current)
    _save(reference, current, options, kinds, html)
    return html


def _save(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    options: DriftOptions,
    kinds: dict[str, str],
    html: Path,
) -> None:
    html.parent.mkdir(parents=True, exist_ok=True)
    report(reference, current, options, kinds).save_html(str(html))


def report(
    reference: pd.DataFrame, current: pd.DataFrame, options: DriftOptions, kinds: dict[str, str]
) -> Any:
    """Evidently's report (a snapshot) of prepared frames: ``DriftedColumnsCount`` and one
    ``ValueDrift`` per column, each with the pinned test of its kind."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    columns = list(kinds)
    method = {"num": options.num_method, "cat": options.cat_method}
    definition = DataDefinition(
        numerical_columns=[c for c in columns if kinds[c] == "num"],
        categorical_columns=[c for c in columns if kinds[c] == "cat"],
    )
    metrics = [
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
    return Report(metrics).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )


def _prepared(
    reference: pd.DataFrame, current: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """The frames as the tests take them, and each column's kind (``num`` or ``cat``)."""
    reference, current = _testable(reference, current[list(reference.columns)])
    kinds = column_kinds(reference)
    return _aligned(reference, kinds), _aligned(current, kinds), kinds


def _testable(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """No test compares a column that holds no value on one side (a window where an optional
    field never arrives): its missingness is compared instead, as ``<column>.missing``
    (``present``/``missing``, a categorical column). A column empty on both sides is left out."""
    reference, current = reference.copy(), current.copy()
    for column in list(reference.columns):
        empty_ref, empty_cur = reference[column].isna().all(), current[column].isna().all()
        if empty_ref and empty_cur:
            reference, current = reference.drop(columns=column), current.drop(columns=column)
        elif empty_ref or empty_cur:
            at = list(reference.columns).index(column)
            for frame in (reference, current):
                missing = frame.pop(column).isna().map({True: "missing", False: "present"})
                frame.insert(at, f"{column}.missing", missing)
    return reference, current


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
    import mlflow

    from trainers import lineage, pipelines
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
