"""`trainers drift` on a text pipeline: descriptors (length, out-of-vocabulary share) and the
prediction distribution of a shifted snapshot against the model's reference, with an HTML report."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import TINY_REVIEWS, make_snapshot, train_ok
from tests.helpers import cli


def test_drift_report_of_a_shifted_text_snapshot(
    store: str, reviews_data: Path, tmp_path: Path
) -> None:
    train_ok(store, "reviews", "--data", str(reviews_data), *TINY_REVIEWS)
    calm = make_snapshot(tmp_path, "reviews", 400, 0.0, 5)
    shifted = make_snapshot(tmp_path, "reviews", 400, 1.0, 6)

    quiet = cli(store, "drift", "reviews@champion", "--data", str(calm), "--out", "calm.html")
    assert quiet.exit_code == 0, quiet.output
    assert "no drift" in quiet.output

    report = tmp_path / "shifted.html"
    loud = cli(store, "drift", "reviews@champion", "--data", str(shifted), "--out", str(report))
    assert loud.exit_code == 0, loud.output
    assert "DRIFT" in loud.output
    rows = {line.split("│")[1].strip(): line for line in loud.output.splitlines() if "│" in line}
    assert {"text_length", "word_count", "oov_share", "has_title"} <= set(rows)
    assert "prediction.positive_probability" in rows
    assert "yes" in rows["oov_share"]  # new topics: words the model never saw
    assert "ks" in rows["oov_share"]
    assert "chisquare" in rows["prediction.sentiment"]
    assert "<html" in report.read_text().lower()
