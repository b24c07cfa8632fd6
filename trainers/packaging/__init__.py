"""The inference pipeline as an MLflow model *from code*: weights as safetensors, preprocessor
state as JSON, and :mod:`trainers.packaging.model_code` naming the class that loads them.

The model is self-contained: the ``trainers`` package travels inside it (``code_paths``; MLflow
puts it on ``sys.path`` when it loads the model) and its ``requirements.txt`` names every package
that code imports, so any MLflow runtime (``mlflow models serve``, MLServer, KServe) loads it with
nothing of this project installed. ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` both
run :class:`PipelineModel`; the gateway reaches the typed predictor underneath through
:func:`unwrap`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc.model import PythonModel
from mlflow.types import ColSpec, DataType, Schema
from pydantic import BaseModel

from trainers import pipelines
from trainers.contract import Pipeline, Predictor, input_columns
from trainers.torchfit import serving_device

MODEL_CODE = Path(__file__).with_name("model_code.py")
PACKAGE = Path(__file__).parents[1]  # trainers/: what loading the model imports
PREDICTOR_ARTIFACT = "predictor"


class PipelineModel(PythonModel):
    """Loads a pipeline's predictor from the model's artifacts; predicts frames of inputs."""

    pipeline: Pipeline[Any, Any, Any]
    predictor: Predictor[Any, Any]

    def load_context(self, context: Any) -> None:
        self.pipeline = pipelines.get(context.model_config["pipeline"])
        directory = Path(context.artifacts[PREDICTOR_ARTIFACT])
        self.predictor = self.pipeline.load_predictor(directory, serving_device())

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        inputs = self.pipeline.inputs_from_frame(model_input)
        outputs = self.predictor.predict_batch(inputs)
        return pd.DataFrame(
            [o.model_dump() for o in outputs], columns=_field_names(self.pipeline.Output)
        )


def unwrap(model: Any) -> PipelineModel:
    """The :class:`PipelineModel` inside a loaded ``mlflow.pyfunc`` model."""
    inner = model.unwrap_python_model()
    if not isinstance(inner, PipelineModel):
        raise TypeError(f"not a lineage-gateway pipeline model: {type(inner).__name__}")
    return inner


def _field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


_MLFLOW_TYPES = {
    "string": DataType.string,
    "integer": DataType.long,
    "number": DataType.double,
    "boolean": DataType.boolean,
}


def _schema(model: type[BaseModel]) -> Schema:
    return Schema(
        [
            ColSpec(_MLFLOW_TYPES[spec.kind], name, required=not spec.nullable)
            for name, spec in input_columns(model).items()
        ]
    )


def signature(pipeline: Pipeline[Any, Any, Any]) -> ModelSignature:
    return ModelSignature(inputs=_schema(pipeline.Input), outputs=_schema(pipeline.Output))


def input_example(pipeline: Pipeline[Any, Any, Any], frame: pd.DataFrame) -> pd.DataFrame:
    """A few complete rows of input columns (no missing values, so types survive JSON)."""
    columns = _field_names(pipeline.Input)
    rows = frame[columns].dropna().head(3)
    return rows.reset_index(drop=True) if len(rows) else frame[columns].head(1)


def log_pipeline_model(
    pipeline: Pipeline[Any, Any, Any], predictor_dir: Path, example: pd.DataFrame
) -> Any:
    """Log the predictor in the active run as an MLflow model from code; return its ModelInfo."""
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODEL_CODE),
        artifacts={PREDICTOR_ARTIFACT: str(predictor_dir)},
        model_config={"pipeline": pipeline.name},
        signature=signature(pipeline),
        input_example=example,
        pip_requirements=requirements(),
        code_paths=[str(PACKAGE)],
    )


# What loading the model imports (trainers.packaging, the pipelines, contract, torchfit, metrics),
# pinned to the versions it was trained with; pyarrow reads the input example.
RUNTIME = ("mlflow", "torch", "pandas", "numpy", "pydantic", "safetensors", "pyarrow")


def requirements() -> list[str]:
    from importlib.metadata import version

    # A local label (torch's ``+cpu``) names a build, not a release: any build of it will do.
    return [f"{name}=={version(name).split('+')[0]}" for name in RUNTIME]
