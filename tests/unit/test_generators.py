from __future__ import annotations

import pandas as pd

from trainers import pipelines
from trainers.pipelines.reviews import tokenize
from trainers.pipelines.reviews.generator import SHIFTED_ASPECTS


def test_generators_are_seeded_and_valid() -> None:
    for name in pipelines.available():
        pipeline = pipelines.get(name)
        first = pipeline.generate(300, 0.3, 5)
        pd.testing.assert_frame_equal(first, pipeline.generate(300, 0.3, 5))
        assert not first.equals(pipeline.generate(300, 0.3, 6))
        pipeline.validate_frame(first, name)
        assert len(pipeline.inputs_from_frame(first)) == 300


def test_loans_shift_moves_population_and_labels() -> None:
    loans = pipelines.get("loans")
    base, shifted = loans.generate(6000, 0.0, 0), loans.generate(6000, 1.0, 0)
    assert shifted["income"].median() < 0.8 * base["income"].median()
    assert shifted["defaulted"].mean() > base["defaulted"].mean() + 0.1
    mix = shifted["purpose"].value_counts(normalize=True)
    assert mix["business"] > 3 * base["purpose"].value_counts(normalize=True)["business"]
    assert base["existing_debt"].isna().mean() > 0.05  # optional fields really go missing


def test_reviews_shift_changes_topics_and_length() -> None:
    reviews = pipelines.get("reviews")
    base, shifted = reviews.generate(1500, 0.0, 0), reviews.generate(1500, 1.0, 0)

    def words(frame: pd.DataFrame) -> float:
        return float(frame["text"].map(lambda t: len(tokenize(t))).mean())

    assert words(shifted) > 1.3 * words(base)
    topic = "|".join(SHIFTED_ASPECTS)
    assert base["text"].str.contains(topic).mean() < 0.05
    assert shifted["text"].str.contains(topic).mean() > 0.8
    balance = base["sentiment"].value_counts(normalize=True)
    assert 0.35 < balance["positive"] < 0.65
    assert base["text"].str.contains(r"\bnot\b|\bnever\b|\bhardly\b").mean() > 0.2
    assert base["text"].str.contains(r"\bbut\b").mean() > 0.2
