"""The plain BentoML service a BentoML user would write for the same logged pipeline: one
batchable API calling the MLflow model, default settings. The benchmark's baseline."""

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
