"""Where runs and models go: the tracking URI, an explicit client, one experiment per pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri(explicit: str | None = None) -> str:
    """``explicit``, else ``MLFLOW_TRACKING_URI``, else a sqlite file in the working directory."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def registry_uri(tracking: str) -> str:
    """``MLFLOW_REGISTRY_URI`` when set, else the tracking store holds the registry too."""
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking


def connect(uri: str) -> MlflowClient:
    """A client for ``uri`` (credentials: MLflow's own ``MLFLOW_TRACKING_USERNAME`` /
    ``_PASSWORD`` / ``_TOKEN``); also points MLflow's model-logging helpers at the same store."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    registry = registry_uri(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry)
    if registry == uri:
        # MLflow exports the registry URI to the environment: unset, a later connect in this
        # process (to another store) would take it for one the user chose.
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
    return MlflowClient(tracking_uri=uri, registry_uri=registry)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of the experiment named after the pipeline, created on first use.

    With a sqlite store, artifacts live in ``mlartifacts/`` beside the database file, so the
    store is one folder whatever the working directory of later readers.
    """
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    location = None
    uri = client.tracking_uri
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        location = (db.parent / "mlartifacts" / name).as_uri()
    return str(client.create_experiment(name, artifact_location=location))
