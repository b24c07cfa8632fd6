"""The plain BentoML services a BentoML user would write for the same logged pipelines: one
batchable API calling the MLflow model, default settings. The benchmarks' baselines
(``PlainLoans`` for `make bench`, ``PlainReviews`` for `make bench-gpu`)."""

from __future__ import annotations

import os
from typing import Any

import bentoml
import mlflow
import pandas as pd


@bentoml.service(name="plain_loans")
class PlainLoans:
    def __init__(self) -> None:
        self.model = mlflow.pyfunc.load_model(os.environ["PLAIN_MODEL_URI"])

    @bentoml.api(batchable=True)  # type: ignore[untyped-decorator]
    def predict(self, applications: list[dict[str, Any]]) -> list[dict[str, Any]]:
        frame = pd.DataFrame(applications).astype({"income": float, "loan_amount": float})
        records: list[dict[str, Any]] = self.model.predict(frame).to_dict("records")
        return records


@bentoml.service(name="plain_reviews")
class PlainReviews:
    def __init__(self) -> None:
        self.model = mlflow.pyfunc.load_model(os.environ["PLAIN_MODEL_URI"])

    @bentoml.api(batchable=True, max_batch_size=512)  # type: ignore[untyped-decorator]
    def predict(self, reviews: list[dict[str, Any]]) -> list[dict[str, Any]]:
        frame = pd.DataFrame(reviews, columns=["text", "title"])
        records: list[dict[str, Any]] = self.model.predict(frame).to_dict("records")
        return records
