"""Settings of one serving process, read once from the environment (prefix ``GATEWAY_``)."""

from __future__ import annotations

import os
from typing import Literal

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

    max_batch_size: int = Field(default=64, ge=1, le=65536)
    """Largest device batch."""

    batch_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    """How long the oldest queued object may wait for companions before its batch goes."""

    shared_device: Literal["auto", "on", "off"] = "auto"
    """One device batcher for all workers (``on``), one per worker (``off``), or ``auto``: shared
    when the model sits on an accelerator, per worker on the CPU (where a shared one would leave
    all but one core idle in the forward pass)."""

    device_socket: str | None = None
    """Unix socket of the shared device batcher (default: one per ``bentoml serve`` in the
    temporary directory)."""

    device_timeout_s: float = Field(default=30.0, gt=0)
    """How long a worker waits for the shared device before answering a batch on its own copy."""

    bf16: bool = False
    """Run the model under bfloat16 autocast (for CUDA; CPU works but rarely gains)."""

    max_queue: int = Field(default=2048, ge=1)
    """Objects allowed to wait for the device; beyond that, 503 with Retry-After."""

    max_bulk: int = Field(default=1000, ge=1)
    """Most objects in one bulk request."""

    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    """Largest request body; larger bodies get 413."""

    poll_interval_s: float = Field(default=2.0, ge=0)
    """How often each worker reads the alias from the registry (0: never follow it)."""

    reload_token: str | None = None
    """Bearer token for ``POST /admin/reload``; unset disables the endpoint."""

    data_port: int = Field(default=3001, ge=0, le=65535)
    """Port of the data plane every worker serves (0 turns it off; BentoML's port still answers)."""

    data_host: str = "0.0.0.0"
    """Address the data plane binds."""

    @property
    def model_uri(self) -> str:
        return f"models:/{self.pipeline}@{self.alias}"
