from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from trainers import pipelines
from trainers.contract import ColumnSpec, Direction, Metric, Predictor, input_columns
from trainers.errors import DataError, ParamError, UnknownPipelineError
from trainers.metrics import roc_auc
from trainers.pipelines.loans import LoanApplication
from trainers.pipelines.reviews import MovieReview


def test_column_specs_follow_the_business_fields() -> None:
    specs = input_columns(LoanApplication)
    assert specs["income"] == ColumnSpec("number", False)
    assert specs["age"] == ColumnSpec("integer", False)
    assert specs["term_months"] == ColumnSpec("integer", False, (12, 24, 36, 48, 60))
    assert specs["existing_debt"] == ColumnSpec("number", True)
    assert specs["purpose"].choices[0] == "debt_consolidation"
    assert input_columns(MovieReview)["title"] == ColumnSpec("string", True)


def test_params_refuse_unknown_and_ill_typed_values() -> None:
    loans = pipelines.get("loans")
    assert loans.parse_params({"epochs": "3", "lr": "0.01"}).epochs == 3
    with pytest.raises(ParamError, match=r"unknown param\(s\) \['layers'\].*hidden_layers"):
        loans.parse_params({"layers": "3"})
    with pytest.raises(ParamError, match="lr: Input should be greater than 0"):
        loans.parse_params({"lr": "-1"})
    reviews = pipelines.get("reviews")
    with pytest.raises(ParamError, match="d_model must be a multiple of n_heads"):
        reviews.parse_params({"d_model": "30", "n_heads": "4"})
    anchor = reviews.parse_params(
        {"n_layers": "6", "d_model": "512", "n_heads": "8", "d_ff": "2048", "max_len": "128"}
    )
    assert (anchor.n_layers, anchor.d_model, anchor.d_ff) == (6, 512, 2048)


def test_unknown_pipeline_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownPipelineError, match="available pipelines: loans, reviews"):
        pipelines.get("nope")


def test_metric_direction() -> None:
    assert Metric("auc", Direction.MAXIMIZE).improvement(0.8, 0.7) == pytest.approx(0.1)
    assert Metric("rmse", Direction.MINIMIZE).improvement(0.8, 0.7) == pytest.approx(-0.1)


def test_split_is_deterministic_and_disjoint() -> None:
    loans = pipelines.get("loans")
    frame = loans.generate(1000, 0.0, 1)
    a = loans.split(frame, 3)
    b = loans.split(frame, 3)
    assert [len(p) for p in a] == [700, 150, 150]
    for x, y in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(x, y)
    assert loans.split(frame, 4)[2]["income"].tolist() != a[2]["income"].tolist()


def test_inputs_from_frame_turns_nan_into_missing_fields() -> None:
    loans = pipelines.get("loans")
    frame = loans.generate(200, 0.0, 0)
    inputs = loans.inputs_from_frame(frame)
    missing = frame["existing_debt"].isna().to_numpy()
    assert missing.any()
    assert [i.existing_debt is None for i in inputs] == missing.tolist()
    bad = frame.head(2).assign(age=[30, 7])
    with pytest.raises(DataError, match="row 1: age: Input should be greater than or equal to 18"):
        loans.inputs_from_frame(bad)


def test_roc_auc_matches_pairwise_counting() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300) + y * 0.3, 1)  # ties on purpose
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
        len(pos) * len(neg)
    )
    assert roc_auc(y, s) == pytest.approx(pairwise)
    assert roc_auc([1, 1], [0.2, 0.3]) == 0.5


def test_merged_batches_get_the_answers_of_separate_ones() -> None:
    """What the shared device does with the batches of several workers: merge, one forward
    pass, split. Reviews pads each batch to its own longest text, so its merge re-pads."""
    pipeline = pipelines.get("reviews")
    frame = pipeline.generate(200, 0.0, 3)
    params = pipeline.Params(d_model=16, n_heads=2, n_layers=1, d_ff=32, epochs=1)
    predictor = pipeline.fit(frame, frame, params, lambda *_: None)
    inputs = list(pipeline.inputs_from_frame(frame.head(7)))
    short = [MovieReview(text="fine")]
    parts = [
        predictor.preprocess(inputs[:4]),
        predictor.preprocess(short),
        predictor.preprocess(inputs[4:]),
    ]
    assert len({p.shape[1] for p in parts}) > 1  # ragged
    merged = predictor.split(predictor.forward(predictor.merge(parts)), [4, 1, 3])
    for part, got in zip(parts, merged, strict=True):
        assert got == pytest.approx(predictor.forward(part), abs=1e-5)


def test_default_merge_and_split_cover_tensors_arrays_and_lists() -> None:
    merge, split = Predictor.merge, Predictor.split  # the defaults; ``self`` is not used
    tensors = merge(None, [torch.ones(2, 3), torch.zeros(1, 3)])  # type: ignore[arg-type]
    assert tensors.shape == (3, 3)
    arrays = merge(None, [np.arange(2), np.arange(3)])  # type: ignore[arg-type]
    assert arrays.tolist() == [0, 1, 0, 1, 2]
    assert merge(None, [[1.0], [2.0, 3.0]]) == [1.0, 2.0, 3.0]  # type: ignore[arg-type]
    assert split(None, np.arange(5), [2, 3])[1].tolist() == [2, 3, 4]  # type: ignore[arg-type]
    assert split(None, [1, 2, 3], [1, 2]) == [[1], [2, 3]]  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="override merge"):
        merge(None, [{"a": 1}])  # type: ignore[arg-type]
