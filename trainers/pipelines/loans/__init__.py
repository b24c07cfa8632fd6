"""Loan applications → default probability and a decision (approve / review / decline)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, Field, model_validator
from torch import nn

from trainers.contract import BusinessObject, Direction, EpochCallback, Metric, Pipeline, Predictor
from trainers.errors import DataError
from trainers.metrics import roc_auc
from trainers.pipelines.loans.generator import EMPLOYMENT, PURPOSES, TERMS, generate
from trainers.torchfit import TorchParams, fit_classifier, load_weights, read_state, save_predictor

Employment = Literal["employed", "self_employed", "unemployed", "retired", "student"]
Purpose = Literal[
    "debt_consolidation", "home_improvement", "car", "education", "medical", "business", "other"
]
Term = Literal[12, 24, 36, 48, 60]
Decision = Literal["approve", "review", "decline"]


class LoanApplication(BusinessObject):
    """One application for a consumer loan."""

    income: float = Field(ge=0, le=10_000_000, description="Gross annual income")
    age: int = Field(ge=18, le=100, description="Applicant age in years")
    loan_amount: float = Field(gt=0, le=1_000_000, description="Amount requested")
    term_months: Term = Field(description="Repayment term in months")
    employment_status: Employment
    purpose: Purpose
    existing_debt: float | None = Field(
        default=None, ge=0, le=10_000_000, description="Outstanding debt; missing if unknown"
    )
    credit_history_years: float | None = Field(
        default=None, ge=0, le=82, description="Length of credit history; missing if none on file"
    )


class LoanDecision(BaseModel):
    """The risk estimate and what to do with the application."""

    default_probability: float = Field(ge=0, le=1)
    decision: Decision


class LoansParams(TorchParams):
    epochs: int = Field(default=12, ge=0, le=1000)
    batch_size: int = Field(default=128, ge=1, le=65536)
    lr: float = Field(default=2e-3, gt=0, le=1)
    weight_decay: float = Field(default=1e-4, ge=0, le=1)
    hidden_units: int = Field(default=32, ge=1, le=4096)
    hidden_layers: int = Field(default=2, ge=0, le=8)
    approve_below: float = Field(default=0.10, gt=0, lt=1, description="approve under this risk")
    decline_above: float = Field(default=0.30, gt=0, lt=1, description="decline over this risk")

    @model_validator(mode="after")
    def _ordered_thresholds(self) -> LoansParams:
        if self.approve_below >= self.decline_above:
            raise ValueError("approve_below must be lower than decline_above")
        return self


NUMERIC = [
    "log_income",
    "age",
    "log_loan_amount",
    "term_months",
    "log_existing_debt",
    "credit_history_years",
    "debt_to_income",
    "payment_to_income",
    "existing_debt_missing",
    "credit_history_missing",
]


def _columns_from_inputs(inputs: Sequence[LoanApplication]) -> dict[str, np.ndarray]:
    def numbers(attr: str) -> np.ndarray:
        return np.array([getattr(x, attr) for x in inputs], dtype=np.float64)

    def optional(attr: str) -> np.ndarray:
        values = [getattr(x, attr) for x in inputs]
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    return {
        "income": numbers("income"),
        "age": numbers("age"),
        "loan_amount": numbers("loan_amount"),
        "term_months": numbers("term_months"),
        "existing_debt": optional("existing_debt"),
        "credit_history_years": optional("credit_history_years"),
        "employment_status": np.array([x.employment_status for x in inputs], dtype=object),
        "purpose": np.array([x.purpose for x in inputs], dtype=object),
    }


def _columns_from_frame(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    numeric = ["income", "age", "loan_amount", "term_months", "existing_debt"]
    cols = {c: frame[c].to_numpy(dtype=np.float64) for c in [*numeric, "credit_history_years"]}
    for c in ("employment_status", "purpose"):
        cols[c] = frame[c].to_numpy(dtype=object)
    return cols


def _derived(cols: dict[str, np.ndarray], medians: dict[str, float]) -> dict[str, np.ndarray]:
    debt = cols["existing_debt"]
    history = cols["credit_history_years"]
    debt_filled = np.where(np.isnan(debt), medians["existing_debt"], debt)
    income = np.maximum(cols["income"], 1.0)
    return {
        "log_income": np.log1p(cols["income"]),
        "age": cols["age"],
        "log_loan_amount": np.log1p(cols["loan_amount"]),
        "term_months": cols["term_months"],
        "log_existing_debt": np.log1p(debt_filled),
        "credit_history_years": np.where(
            np.isnan(history), medians["credit_history_years"], history
        ),
        "debt_to_income": np.minimum((debt_filled + cols["loan_amount"]) / income, 20.0),
        "payment_to_income": np.minimum(
            cols["loan_amount"] / cols["term_months"] * 12 / income, 20.0
        ),
        "existing_debt_missing": np.isnan(debt).astype(np.float64),
        "credit_history_missing": np.isnan(history).astype(np.float64),
    }


class Preprocessor:
    """Imputation, log scaling, standardisation and one-hot encoding, as JSON-able state."""

    def __init__(self, state: dict[str, dict[str, float]]) -> None:
        self.state = state
        self.mean = np.array([state["mean"][n] for n in NUMERIC])
        self.std = np.array([state["std"][n] for n in NUMERIC])

    @classmethod
    def fit(cls, frame: pd.DataFrame) -> Preprocessor:
        cols = _columns_from_frame(frame)
        medians = {
            k: float(np.nanmedian(cols[k])) if np.isfinite(cols[k]).any() else 0.0
            for k in ("existing_debt", "credit_history_years")
        }
        derived = _derived(cols, medians)
        mean = {n: float(derived[n].mean()) for n in NUMERIC}
        std = {n: float(derived[n].std()) or 1.0 for n in NUMERIC}
        return cls({"medians": medians, "mean": mean, "std": std})

    @property
    def width(self) -> int:
        return len(NUMERIC) + len(EMPLOYMENT) + len(PURPOSES)

    def transform(self, cols: dict[str, np.ndarray]) -> torch.Tensor:
        derived = _derived(cols, self.state["medians"])
        numeric = (np.stack([derived[n] for n in NUMERIC], axis=1) - self.mean) / self.std
        employment = cols["employment_status"][:, None] == np.array(EMPLOYMENT, dtype=object)
        purpose = cols["purpose"][:, None] == np.array(PURPOSES, dtype=object)
        features = np.concatenate([numeric, employment, purpose], axis=1)
        return torch.from_numpy(features.astype(np.float32))


def build_module(width: int, hidden_units: int, hidden_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden_units), nn.ReLU()]
        width = hidden_units
    layers.append(nn.Linear(width, 2))
    return nn.Sequential(*layers)


class LoansPredictor(Predictor[LoanApplication, LoanDecision]):
    def __init__(
        self, preprocessor: Preprocessor, module: nn.Module, config: dict[str, float]
    ) -> None:
        self.preprocessor = preprocessor
        self.config = config
        self.device = next(module.parameters()).device
        self.module = module.eval()

    def preprocess(self, inputs: Sequence[LoanApplication]) -> torch.Tensor:
        return self.preprocessor.transform(_columns_from_inputs(inputs))

    def forward(self, features: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            logits = self.module(features.to(self.device, non_blocking=True))
            return torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy().astype(np.float64)

    def postprocess(self, raw: np.ndarray, inputs: Sequence[LoanApplication]) -> list[LoanDecision]:
        approve, decline = self.config["approve_below"], self.config["decline_above"]
        return [
            LoanDecision(
                default_probability=p,
                decision="approve" if p < approve else "decline" if p >= decline else "review",
            )
            for p in raw.tolist()
        ]

    def save(self, directory: Path) -> None:
        state = {"preprocessor": self.preprocessor.state, "config": self.config}
        save_predictor(directory, self.module, state)


class LoansPipeline(Pipeline[LoanApplication, LoanDecision, LoansParams]):
    name = "loans"
    input_key = "application"
    target = "defaulted"
    metric = Metric("auc", Direction.MAXIMIZE)
    default_rows = 8000
    Input = LoanApplication
    Output = LoanDecision
    Params = LoansParams

    def generate(self, rows: int, shift: float, seed: int) -> pd.DataFrame:
        return generate(rows, shift, seed)

    def validate_frame(self, frame: pd.DataFrame, source: str) -> pd.DataFrame:
        frame = super().validate_frame(frame, source)
        if not frame[self.target].isin([0, 1]).all():
            raise DataError(f"{source}: column {self.target!r} must hold 0 or 1")
        return frame

    def fit(
        self, train: pd.DataFrame, valid: pd.DataFrame, params: LoansParams, on_epoch: EpochCallback
    ) -> LoansPredictor:
        preprocessor = Preprocessor.fit(train)

        def tensors(frame: pd.DataFrame) -> list[torch.Tensor]:
            x = preprocessor.transform(_columns_from_frame(frame))
            return [x, torch.from_numpy(frame[self.target].to_numpy(dtype=np.int64))]

        def valid_auc(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
            scores = torch.softmax(logits, dim=1)[:, 1].numpy()
            return {"valid_auc": roc_auc(labels.numpy(), scores)}

        module = fit_classifier(
            lambda: build_module(preprocessor.width, params.hidden_units, params.hidden_layers),
            tensors(train),
            tensors(valid),
            params=params,
            on_epoch=on_epoch,
            valid_metric=valid_auc,
        )
        config = {
            "hidden_units": params.hidden_units,
            "hidden_layers": params.hidden_layers,
            "approve_below": params.approve_below,
            "decline_above": params.decline_above,
        }
        return LoansPredictor(preprocessor, module, config)

    def load_predictor(self, directory: Path, device: torch.device) -> LoansPredictor:
        state = read_state(directory)
        preprocessor = Preprocessor(state["preprocessor"])
        config = state["config"]
        module = build_module(
            preprocessor.width, int(config["hidden_units"]), int(config["hidden_layers"])
        )
        return LoansPredictor(preprocessor, load_weights(module, directory, device), config)

    def evaluate(self, frame: pd.DataFrame, outputs: Sequence[LoanDecision]) -> float:
        return roc_auc(frame[self.target].to_numpy(), [o.default_probability for o in outputs])

    def features(
        self, inputs: pd.DataFrame, predictor: Predictor[LoanApplication, LoanDecision]
    ) -> pd.DataFrame:
        out = inputs[list(LoanApplication.model_fields)].copy()
        debt = out["existing_debt"].fillna(0.0)
        out["debt_to_income"] = (debt + out["loan_amount"]) / out["income"].clip(lower=1.0)
        return out


PIPELINE = LoansPipeline()
__all__ = ["PIPELINE", "TERMS", "LoanApplication", "LoanDecision", "LoansParams"]
