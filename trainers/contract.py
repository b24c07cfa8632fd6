"""The pipeline contract: what a data scientist writes, and all the tool needs to know.

A pipeline is a recipe (:class:`Pipeline`): the business objects it accepts and returns, typed
params, how to make and read its data, how to fit, how to score. Fitting returns a
:class:`Predictor`: preprocessor state plus a torch module, saved as plain files (safetensors and
JSON) and loaded back on the serving device. Nothing here knows about MLflow or serving.
"""

from __future__ import annotations

import enum
import functools
import itertools
import re
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from trainers.errors import DataError, ParamError

InputT = TypeVar("InputT", bound=BaseModel)
OutputT = TypeVar("OutputT", bound=BaseModel)
ParamsT = TypeVar("ParamsT", bound="PipelineParams")

SCORE_CHUNK = 512
EpochCallback = Callable[[int, dict[str, float]], None]
"""Called after every epoch with the epoch number (1-based) and that epoch's metrics."""


class Direction(enum.StrEnum):
    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


@dataclass(frozen=True)
class Metric:
    """The evaluation metric a pipeline is gated on."""

    name: str
    direction: Direction

    def improvement(self, challenger: float, champion: float) -> float:
        """How much better the challenger is (positive = better), whatever the direction."""
        delta = challenger - champion
        return delta if self.direction is Direction.MAXIMIZE else -delta


class PipelineParams(BaseModel):
    """Base for a pipeline's params: every field has a default; unknown names are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    epochs: int = 10


class Predictor(ABC, Generic[InputT, OutputT]):
    """A fitted pipeline: what serving runs. Preprocess → torch module on a device → postprocess."""

    device: torch.device

    @abstractmethod
    def preprocess(self, inputs: Sequence[InputT]) -> Any:
        """Business objects → model inputs on the CPU (encoding, scaling, tokenising): a tensor,
        an array or a list with one row per input."""

    @abstractmethod
    def forward(self, features: Any) -> Any:
        """Move ``features`` to ``self.device`` and run the torch module; returns results on the
        CPU, one row per input (a tensor, an array or a list)."""

    def merge(self, parts: Sequence[Any]) -> Any:
        """Join the features of several preprocessed batches row-wise, so that one forward pass
        answers them all. Override when features are ragged (e.g. padded per batch)."""
        first = parts[0]
        if isinstance(first, torch.Tensor):
            return torch.cat(list(parts))
        if isinstance(first, np.ndarray):
            return np.concatenate(parts)
        if isinstance(first, list):
            return [row for part in parts for row in part]
        raise TypeError(f"cannot merge features of type {type(first).__name__}; override merge")

    def split(self, raw: Any, sizes: Sequence[int]) -> list[Any]:
        """Cut the results of a merged forward pass back into parts of ``sizes`` rows."""
        bounds = np.cumsum([0, *sizes]).tolist()
        return [raw[start:end] for start, end in itertools.pairwise(bounds)]

    @abstractmethod
    def postprocess(self, raw: Any, inputs: Sequence[InputT]) -> list[OutputT]:
        """Model results → one business answer per input."""

    def predict_batch(self, inputs: Sequence[InputT]) -> list[OutputT]:
        """Answer a batch of business objects in one vectorised pass."""
        if not inputs:
            return []
        return self.postprocess(self.forward(self.preprocess(inputs)), inputs)

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write the weights (safetensors) and preprocessor state (JSON) into ``directory``."""


class Pipeline(ABC, Generic[InputT, OutputT, ParamsT]):
    """A recipe from business objects to answers. Subclass it in ``trainers/pipelines/<name>/``."""

    name: ClassVar[str]
    input_key: ClassVar[str]
    """The JSON key a single object travels under in a request, e.g. ``application``."""
    target: ClassVar[str]
    """The label column of a snapshot."""
    metric: ClassVar[Metric]
    default_rows: ClassVar[int] = 5000
    """Rows of the seeded demo snapshot ``trainers train NAME`` uses when no ``--data`` is given."""

    Input: type[InputT]
    Output: type[OutputT]
    Params: type[ParamsT]

    # -- data -------------------------------------------------------------------------------
    @abstractmethod
    def generate(self, rows: int, shift: float, seed: int) -> pd.DataFrame:
        """A labelled demo snapshot; ``shift`` in [0, 1] moves the population away from 0."""

    def target_kind(self) -> str:
        """``number`` or ``string``: what the label column must hold."""
        return "number"

    def validate_frame(self, frame: pd.DataFrame, source: str) -> pd.DataFrame:
        """Check a snapshot has every input field and the label with usable types."""
        expected = {**input_columns(self.Input), self.target: ColumnSpec(self.target_kind(), False)}
        missing = [c for c in expected if c not in frame.columns]
        if missing:
            raise DataError(
                f"{source}: missing column(s) {missing}; a {self.name} snapshot needs "
                f"{sorted(expected)}"
            )
        for column, spec in expected.items():
            spec.check(frame[column], column, source)
        return frame

    def split(
        self, frame: pd.DataFrame, seed: int
    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """Deterministic 70/15/15 train/valid/test split (the test part is the gate's holdout)."""
        order = np.random.default_rng(seed).permutation(len(frame))
        n_train, n_valid = int(len(frame) * 0.70), int(len(frame) * 0.15)
        parts = np.split(order, [n_train, n_train + n_valid])
        train, valid, test = (frame.iloc[p].reset_index(drop=True) for p in parts)
        return train, valid, test

    def inputs_from_frame(self, frame: pd.DataFrame) -> list[InputT]:
        """Business objects from the input columns of a frame (NaN becomes a missing field)."""
        frame = frame.reindex(columns=list(self.Input.model_fields))  # absent optional → NaN
        records = frame.astype(object).where(frame.notna(), None)
        out: list[InputT] = []
        for i, record in enumerate(records.to_dict("records")):
            try:
                out.append(self.Input.model_validate(record))
            except ValidationError as exc:
                raise DataError(f"row {i}: {describe_validation_error(exc)}") from exc
        return out

    # -- learning ---------------------------------------------------------------------------
    @abstractmethod
    def fit(
        self,
        train: pd.DataFrame,
        valid: pd.DataFrame,
        params: ParamsT,
        on_epoch: EpochCallback,
    ) -> Predictor[InputT, OutputT]:
        """Fit preprocessors and the torch module; report each epoch through ``on_epoch``."""

    @abstractmethod
    def load_predictor(self, directory: Path, device: torch.device) -> Predictor[InputT, OutputT]:
        """Rebuild a predictor from what :meth:`Predictor.save` wrote."""

    @abstractmethod
    def evaluate(self, frame: pd.DataFrame, outputs: Sequence[OutputT]) -> float:
        """The gate metric of ``outputs`` against the labels in ``frame``."""

    def score(self, predictor: Predictor[InputT, OutputT], frame: pd.DataFrame) -> float:
        """The gate metric of ``predictor`` on a labelled frame, predicted in chunks."""
        inputs = self.inputs_from_frame(frame)
        outputs = [
            out
            for start in range(0, len(inputs), SCORE_CHUNK)
            for out in predictor.predict_batch(inputs[start : start + SCORE_CHUNK])
        ]
        return self.evaluate(frame, outputs)

    # -- drift ------------------------------------------------------------------------------
    @abstractmethod
    def features(self, inputs: pd.DataFrame, predictor: Predictor[InputT, OutputT]) -> pd.DataFrame:
        """The frame drift is measured on, from a frame of input columns: business fields and
        descriptors (text length, out-of-vocabulary share against ``predictor``'s vocabulary…)."""

    def parse_params(self, overrides: dict[str, str]) -> ParamsT:
        """Params from ``k=v`` strings, refusing unknown names and ill-typed values."""
        unknown = sorted(set(overrides) - set(self.Params.model_fields))
        if unknown:
            raise ParamError(
                f"unknown param(s) {unknown} for pipeline {self.name!r}; valid params: "
                f"{', '.join(sorted(self.Params.model_fields))}"
            )
        try:
            return self.Params.model_validate(overrides)
        except ValidationError as exc:
            raise ParamError(
                f"invalid param for pipeline {self.name!r}: {describe_validation_error(exc)}"
            ) from exc


def describe_validation_error(exc: ValidationError) -> str:
    """One line per field: ``field: what was wrong (input: value)``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "value"
        parts.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


@dataclass(frozen=True)
class ColumnSpec:
    """What a snapshot column must hold (``integer``, ``number``, ``boolean`` or ``string``), its
    choices and
    whether it may be missing."""

    kind: str
    nullable: bool
    choices: tuple[Any, ...] = ()

    def check(self, series: pd.Series, column: str, source: str) -> None:
        if not self.nullable and series.isna().any():
            raise DataError(f"{source}: column {column!r} has missing values; it is required")
        present = series.dropna()
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        if self.kind in ("number", "integer") and not numeric:
            raise DataError(
                f"{source}: column {column!r} has type {series.dtype}, expected a number"
            )
        if self.kind == "integer" and not (present % 1 == 0).all():
            raise DataError(f"{source}: column {column!r} has fractions, expected whole numbers")
        if self.kind == "boolean" and not pd.api.types.is_bool_dtype(present):
            raise DataError(
                f"{source}: column {column!r} has type {series.dtype}, expected true/false"
            )
        if self.kind == "string" and not all(isinstance(v, str) for v in present):
            raise DataError(f"{source}: column {column!r} has type {series.dtype}, expected text")
        if self.choices:
            bad = sorted({v for v in present if v not in self.choices}, key=str)
            if bad:
                raise DataError(
                    f"{source}: column {column!r} has values {bad[:5]} outside the valid "
                    f"choices {list(self.choices)}"
                )


def input_columns(model: type[BaseModel]) -> dict[str, ColumnSpec]:
    """Column specs derived from a business object's field annotations."""
    return {name: _column_spec(f.annotation) for name, f in model.model_fields.items()}


def _column_spec(annotation: Any) -> ColumnSpec:
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = _column_spec(next(a for a in args if a is not type(None)))
        return ColumnSpec(inner.kind, True, inner.choices)
    if origin is typing.Annotated:
        return _column_spec(args[0])
    if origin is typing.Literal:
        kinds = {_column_spec(type(a)).kind for a in args}
        return ColumnSpec(kinds.pop() if len(kinds) == 1 else "string", False, tuple(args))
    if annotation is bool:
        return ColumnSpec("boolean", False)
    if annotation is int:
        return ColumnSpec("integer", False)
    if annotation is float:
        return ColumnSpec("number", False)
    if annotation is str:
        return ColumnSpec("string", False)
    raise TypeError(f"unsupported business field type {annotation!r}")


CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|[\ud800-\udfff]")
"""Characters no business text carries: C0 controls other than tab and newlines, DEL, and lone
UTF-16 surrogates (JSON's ``\\ud800`` escapes, which cannot be stored or encoded as UTF-8)."""

STRICT_TYPES = (
    "Types are strict, so that a client's bug is refused rather than answered: a number field "
    "takes a JSON number only (true/false and numeric strings are refused); an integer field "
    "also takes a whole number written with a fraction (36.0 is 36), never 36.5; a string field "
    "takes a JSON string only, without NUL, other control characters (tab and newlines are "
    "fine) or lone surrogates; unknown fields are refused."
)


def _document_types(schema: dict[str, Any]) -> None:
    description = str(schema.get("description", "")).strip()
    schema["description"] = f"{description}\n\n{STRICT_TYPES}".strip()


class BusinessObject(BaseModel):
    """Base for the objects a pipeline accepts: strict JSON types (:data:`STRICT_TYPES`, also in
    the JSON schema's description), unknown fields refused, NaN and infinities refused."""

    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, json_schema_extra=_document_types
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        kind = _field_kind(cls, str(info.field_name))
        if isinstance(value, bool) and kind != "boolean":
            raise PydanticCustomError("strict_type", f"expected {_KIND_NAMES[kind]}, got a boolean")
        if isinstance(value, str | bytes) and kind in ("number", "integer"):
            raise PydanticCustomError("strict_type", f"expected {_KIND_NAMES[kind]}, got a string")
        if isinstance(value, str) and (bad := CONTROL.search(value)):
            raise PydanticCustomError(
                "text_character",
                f"text must not contain the character U+{ord(bad.group()):04X} "
                f"(at position {bad.start()})",
            )
        return value


_KIND_NAMES = {
    "number": "a number",
    "integer": "an integer",
    "boolean": "true or false",
    "string": "a string",
}


@functools.cache
def _field_kind(model: type[BaseModel], field: str) -> str:
    return _column_spec(model.model_fields[field].annotation).kind
