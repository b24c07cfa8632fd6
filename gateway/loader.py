"""Load a registered pipeline through MLflow and expose the one interface serving calls."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from gateway.errors import ModelUnavailable
from gateway.settings import GatewaySettings


@dataclass(frozen=True)
class LoadedModel:
    """A registered pipeline version, ready to predict."""

    name: str
    version: str
    run_id: str
    input_key: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    predictor: Any
    loaded_at: float = field(default_factory=time.time)

    def predict_batch(self, inputs: Sequence[BaseModel]) -> list[BaseModel]:
        outputs: list[BaseModel] = self.predictor.predict_batch(inputs)
        if len(outputs) != len(inputs):
            raise RuntimeError(f"pipeline returned {len(outputs)} answers for {len(inputs)} inputs")
        return outputs


def load(settings: GatewaySettings) -> LoadedModel:
    """The version ``settings.alias`` points at, loaded on the serving device."""
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    try:
        version = client.get_model_version_by_alias(settings.pipeline, settings.alias)
        source = client.get_model_version_download_uri(settings.pipeline, version.version)
        model = mlflow.pyfunc.load_model(source)
    except MlflowException as exc:
        raise ModelUnavailable(
            f"cannot load {settings.model_uri} from {settings.tracking_uri}: {exc.message}"
        ) from exc
    inner = model.unwrap_python_model()
    pipeline = inner.pipeline
    return LoadedModel(
        name=settings.pipeline,
        version=str(version.version),
        run_id=str(version.run_id),
        input_key=pipeline.input_key,
        input_model=pipeline.Input,
        output_model=pipeline.Output,
        predictor=inner.predictor,
    )
