"""Refusals: a clear message naming the problem and the valid choices, non-zero exit, and no
model version (and no alias) left behind."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import FAST_LOANS, train_ok
from tests.helpers import cli
from trainers import packaging, pipelines
from trainers.snapshots import write_snapshot


def versions(uri: str, name: str = "loans") -> list[str]:
    client = MlflowClient(uri, uri)
    return [str(v.version) for v in client.search_model_versions(f"name = '{name}'")]


def snapshot_with(tmp_path: Path, change: str) -> Path:
    frame = pipelines.get("loans").generate(300, 0.0, 0)
    if change == "missing":
        frame = frame.drop(columns=["income", "purpose"])
    elif change == "types":
        frame["age"] = frame["age"].astype(str)
    elif change == "choices":
        frame.loc[3, "purpose"] = "yacht"
    path = tmp_path / f"{change}.parquet"
    write_snapshot(frame, path, {})
    return path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "mortgages"], ["unknown pipeline 'mortgages'", "loans", "reviews"]),
        (
            ["train", "loans", "--param", "depth=3"],
            ["unknown param(s) ['depth']", "valid params:", "hidden_units", "epochs"],
        ),
        (["train", "loans", "--param", "epochs=many"], ["epochs", "valid integer", "'many'"]),
        (
            ["train", "loans", "--param", "approve_below=0.5"],
            ["approve_below must be lower than decline_above"],
        ),
        (
            ["train", "loans", "--data", "nowhere/loans.parquet"],
            ["data file not found", "nowhere/loans.parquet"],
        ),
        (["lineage", "loans@champion"], ["no alias 'champion'"]),
        (["rollback", "loans"], ["no champion to roll back"]),
    ],
)
def test_refused_before_anything_is_logged(
    store: str, args: list[str], expected: list[str]
) -> None:
    result = cli(store, *args)
    assert result.exit_code != 0
    for fragment in expected:
        assert fragment in result.output
    assert versions(store) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("missing", ["missing column(s) ['income', 'purpose']", "a loans snapshot needs"]),
        ("types", ["column 'age'", "expected a number"]),
        ("choices", ["column 'purpose'", "'yacht'", "valid choices", "debt_consolidation"]),
    ],
)
def test_bad_snapshots_are_refused(
    store: str, tmp_path: Path, change: str, expected: list[str]
) -> None:
    path = snapshot_with(tmp_path, change)
    result = cli(store, "train", "loans", "--data", str(path))
    assert result.exit_code == 2
    assert str(path) in result.output
    for fragment in expected:
        assert fragment in result.output
    assert versions(store) == []


def test_failed_logging_marks_run_failed_and_leaves_no_version(
    store: str, loans_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)

    def broken_store(*args: object, **kwargs: object) -> None:
        raise OSError("artifact store unavailable")

    monkeypatch.setattr(packaging, "log_pipeline_model", broken_store)
    with pytest.raises(OSError, match="artifact store unavailable"):
        cli(store, "train", "loans", "--data", str(loans_data), *FAST_LOANS)

    client = MlflowClient(store, store)
    experiment = client.get_experiment_by_name("loans")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    assert versions(store) == ["1"]
    assert str(client.get_model_version_by_alias("loans", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("loans", "challenger").version) == "1"
    assert mlflow.active_run() is None


def test_data_command_writes_a_valid_snapshot(store: str, tmp_path: Path) -> None:
    out = tmp_path / "reviews.parquet"
    result = cli(
        store, "data", "reviews", "--out", str(out), "--rows", "50", "--shift", "1", "--seed", "4"
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert len(frame) == 50
    assert set(frame.columns) == {"text", "title", "sentiment"}
    assert cli(store, "data", "reviews", "--out", str(out), "--shift", "2").exit_code == 2
