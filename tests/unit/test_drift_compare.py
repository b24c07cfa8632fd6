"""The drift comparison on windows a live service really sends: an optional field that never
arrives, or a field no side has."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainers.drift import DriftOptions, DriftResult, _prepared, compare, report
from trainers.pipelines import get


def test_a_field_that_never_arrives_is_tested_on_its_missingness(tmp_path: Path) -> None:
    loans = get("loans")
    reference = loans.generate(1_000, 0.0, 1).drop(columns=[loans.target])
    current = loans.generate(500, 0.0, 2).drop(columns=[loans.target])
    assert reference["existing_debt"].notna().any()
    current["existing_debt"] = None  # a client that never sends it
    reference["note"] = current["note"] = None  # nobody has it: nothing to test

    result = compare(reference, current, DriftOptions(), tmp_path / "report.html")

    by_column = {c.column: c for c in result.columns}
    assert "note" not in by_column
    assert "note.missing" not in by_column
    assert "existing_debt" not in by_column
    missing = by_column["existing_debt.missing"]
    assert (missing.kind, missing.method, missing.drifted) == ("cat", "chisquare", True)
    assert missing.score < 0.05
    assert not by_column["age"].drifted  # the other fields are tested as always
    assert result.current_rows == 500
    assert "existing_debt.missing" in (tmp_path / "report.html").read_text()

    # The report shows the scores the verdicts came from.
    snapshot = report(*_prepared(reference, current)[:2], DriftOptions(), by_kind(result))
    shown = {m["config"].get("column"): m["value"] for m in snapshot.dict()["metrics"]}
    assert {c.column: shown[c.column] for c in result.columns} == pytest.approx(
        {c.column: c.score for c in result.columns}
    )


def by_kind(result: DriftResult) -> dict[str, str]:
    return {c.column: c.kind for c in result.columns}


def test_a_window_of_the_reference_population_does_not_drift() -> None:
    loans = get("loans")
    reference = loans.generate(1_000, 0.0, 1).drop(columns=[loans.target])
    current = loans.generate(500, 0.0, 2).drop(columns=[loans.target])
    result = compare(reference, current)
    assert not result.detected
    assert {c.column for c in result.columns} == set(reference.columns)
