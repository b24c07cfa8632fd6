"""`trainers drift` on a text pipeline: descriptors (length, out-of-vocabulary share) and the
prediction distribution of a shifted snapshot against the model's reference, with an HTML report.
The exit code gates a CI job: 1 when the snapshot drifted, 0 when it did not, 2 when it cannot
run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY_REVIEWS, make_snapshot, train_ok
from tests.helpers import cli


@pytest.fixture(scope="module")
def reviews_store(tmp_path_factory: pytest.TempPathFactory, reviews_data: Path) -> str:
    """A store with one reviews champion (module-scoped: drift only reads it)."""
    root = tmp_path_factory.mktemp("reviews-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    train_ok(uri, "reviews", "--data", str(reviews_data), *TINY_REVIEWS)
    return uri


def test_drift_report_of_a_shifted_text_snapshot(reviews_store: str, tmp_path: Path) -> None:
    calm = make_snapshot(tmp_path, "reviews", 400, 0.0, 5)
    shifted = make_snapshot(tmp_path, "reviews", 400, 1.0, 6)

    calm_report = str(tmp_path / "calm.html")
    quiet = cli(
        reviews_store, "drift", "reviews@champion", "--data", str(calm), "--out", calm_report
    )
    assert quiet.exit_code == 0, quiet.output
    assert "no drift" in quiet.output

    report = tmp_path / "shifted.html"
    loud = cli(
        reviews_store, "drift", "reviews@champion", "--data", str(shifted), "--out", str(report)
    )
    assert loud.exit_code == 1, loud.output  # drift fails the CI job that runs it
    assert "DRIFT" in loud.output
    rows = {line.split("│")[1].strip(): line for line in loud.output.splitlines() if "│" in line}
    assert {"text_length", "word_count", "oov_share", "has_title"} <= set(rows)
    assert "prediction.positive_probability" in rows
    assert "yes" in rows["oov_share"]  # new topics: words the model never saw
    assert "ks" in rows["oov_share"]
    assert "chisquare" in rows["prediction.sentiment"]
    assert "<html" in report.read_text().lower()


def test_drift_json_carries_the_table_the_verdict_and_the_report(
    reviews_store: str, tmp_path: Path
) -> None:
    shifted = make_snapshot(tmp_path, "reviews", 400, 1.0, 6)
    report = tmp_path / "shifted.html"
    args = ("drift", "reviews@champion", "--data", str(shifted), "--out", str(report), "--json")

    result = cli(reviews_store, *args)

    assert result.exit_code == 1, result.output
    found = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    assert found["ref"] == "reviews@champion"
    assert found["detected"] is True
    assert found["verdict"].startswith("DRIFT")
    assert found["current_rows"] == 400
    assert found["report"] == str(report.resolve())
    assert "<html" in report.read_text().lower()
    columns = {c["column"]: c for c in found["columns"]}
    assert {"text_length", "word_count", "oov_share", "has_title"} <= set(columns)
    assert columns["oov_share"]["drifted"] is True
    assert columns["oov_share"]["method"] == "ks"
    assert columns["prediction.sentiment"]["kind"] == "cat"
    assert found["share"] == sum(c["drifted"] for c in columns.values()) / len(columns)


def test_drift_that_cannot_run_exits_2_not_1(reviews_store: str, tmp_path: Path) -> None:
    """1 means drifted: an unknown model or version is trouble, 2, so a gate tells them apart."""
    calm = make_snapshot(tmp_path, "reviews", 50, 0.0, 5)
    for ref in ("reviews/99", "no-such-model@champion"):
        result = cli(reviews_store, "drift", ref, "--data", str(calm))
        assert result.exit_code == 2, result.output
