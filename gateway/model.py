"""The one interface serving calls: a loaded, verified, warmed-up pipeline version.

Kept apart from :mod:`gateway.loader` so that importing the service (which BentoML also does in
its supervising process) does not pull in MLflow and torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class LoadedModel:
    """A registered pipeline version, verified, loaded on the serving device and warmed up."""

    name: str
    version: str
    run_id: str
    input_key: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    predictor: Any
    pipeline: Any
    """The pipeline recipe (target, metric, evaluate, features) for monitoring."""
    reference: Path | None = None
    """The drift reference sample, where it came with the model (a bundled one); else the
    monitor reads it from the version's MLflow run."""
    loaded_at: float = field(default_factory=time.time)

    def info(self) -> dict[str, Any]:
        return {
            "model_name": self.name,
            "model_version": self.version,
            "run_id": self.run_id,
            "loaded_at": self.loaded_at,
            "input_key": self.input_key,
            "input_schema": self.input_model.model_json_schema(),
            "output_schema": self.output_model.model_json_schema(),
        }
