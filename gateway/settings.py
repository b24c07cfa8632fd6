"""Settings of one serving process, read once from the environment (prefix ``GATEWAY_``)."""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="forbid", frozen=True)

    pipeline: str = "loans"
    """Registered model to serve (the pipeline name)."""

    alias: str = "champion"
    """Registry alias to serve."""

    tracking_uri: str = Field(default_factory=_default_tracking_uri)
    """MLflow tracking/registry URI (default: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``)."""

    @property
    def model_uri(self) -> str:
        return f"models:/{self.pipeline}@{self.alias}"
