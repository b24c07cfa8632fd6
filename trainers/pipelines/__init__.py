"""Pipelines, one package each. A package exposes ``PIPELINE``, an instance of ``Pipeline``."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from trainers.contract import Pipeline
from trainers.errors import UnknownPipelineError

AnyPipeline = Pipeline[Any, Any, Any]


def available() -> list[str]:
    """Names of the pipeline packages that ship here."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg)


def get(name: str) -> AnyPipeline:
    """The pipeline called ``name``; the error lists the valid names."""
    if name not in available():
        raise UnknownPipelineError(
            f"unknown pipeline {name!r}; available pipelines: {', '.join(available())}"
        )
    module = importlib.import_module(f"{__name__}.{name}")
    pipeline: AnyPipeline = module.PIPELINE
    return pipeline
