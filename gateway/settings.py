"""Settings of one serving process, read once from the environment (prefix ``GATEWAY_``)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from trainers.sqlstore import embedded_url

if TYPE_CHECKING:
    from mlflow import MlflowClient


def _default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")


TRACKING_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
"""MLflow's HTTP client retries a request 7 times over about 4 minutes by default: a serving
process reads the registry on a schedule of its own (and backs off), so each read fails fast."""


def fail_fast_tracking() -> None:
    """Apply :data:`TRACKING_CLIENT_DEFAULTS` to this process, where not set explicitly."""
    for variable, value in TRACKING_CLIENT_DEFAULTS.items():
        os.environ.setdefault(variable, value)


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

    feedback_token: str | None = None
    """Bearer token for ``POST /feedback`` (on the serving ports and the controller); unset
    leaves feedback open to whoever may predict (it only records labels for answers given)."""

    api_key: str | None = None
    """Key every prediction must carry, in the ``x-api-key`` header (HTTP) or metadata (gRPC);
    unset: predictions are open (put the gateway behind the network policy you trust)."""

    request_timeout_s: float = Field(default=30.0, gt=0)
    """The data plane's limit for reading a request body and answering it: a slower request gets
    408 (body) or 504 (answer), and its connection is closed."""

    keep_alive_s: float = Field(default=5.0, gt=0)
    """An idle keep-alive connection to the data plane is closed after this long."""

    data_port: int = Field(default=3001, ge=0, le=65535)
    """Port of the data plane every worker serves (0 turns it off; BentoML's port still answers)."""

    data_host: str = "0.0.0.0"
    """Address the data plane and the gRPC server bind."""

    grpc_port: int = Field(default=3002, ge=0, le=65535)
    """Port of the Open Inference Protocol gRPC server, shared by every worker with
    ``SO_REUSEPORT`` (0: no gRPC)."""

    grpc_server: Literal["auto", "native", "python"] = "auto"
    """Which gRPC server each worker runs: ``native``, the ``gateway-grpc`` front that ``make``
    builds (Go; it carries the calls to the worker, which answers them), ``python``, grpc.aio in
    the worker, or ``auto``: the native front where it was built and starts, else grpc.aio."""

    # -- the shared store: every replica appends, the loop controller reads ------------------
    state_dir: Path = Path("gateway-state")
    """Files of this process: the embedded store (when ``store_url`` is unset), and the
    controller's drift reports and retrain logs (relative paths: from the working directory)."""

    store_url: str | None = None
    """The shared store: ``postgresql://USER@HOST:PORT/DB`` for a deployment of several replicas
    (password through ``PGPASSWORD`` or ``~/.pgpass``, never in logs), or ``sqlite:///PATH`` on
    one host (default: ``predictions.db`` in ``state_dir``)."""

    store_timeout_s: float = Field(default=5.0, gt=0)
    """How long a connection to the store may take before the caller gives up (and retries)."""

    log_predictions: bool = True
    """Append every answered object with its request id to the prediction log (needed by drift,
    feedback and retraining on production traffic)."""

    log_buffer: int = Field(default=20_000, ge=1)
    """Answered objects a worker keeps waiting to be written (also while the store is
    unreachable); when full, samples are dropped and counted."""

    # -- the loop controller: drift, alerts, quality, retrains (``gateway-controller``) -------
    controller_host: str = "0.0.0.0"
    """Address the controller's HTTP API binds."""

    controller_port: int = Field(default=3100, ge=0, le=65535)
    """Port of the controller's HTTP API (alerts webhook, feedback, drift, retrains, metrics)."""

    lease_ttl_s: float = Field(default=10.0, gt=0)
    """The active controller's lease lasts this long and is renewed every third of it; a
    standby takes over at most ``lease_ttl_s`` plus a third after the active one stops."""

    retrain_timeout_s: float = Field(default=3600.0, gt=0)
    """A retrain taken over from a controller that died is given up (recorded as failed) when
    its MLflow run has not finished this long after it started."""

    drift_enabled: bool = True
    """Run the drift monitor (in the active controller)."""

    drift_window: int = Field(default=500, ge=20)
    """Objects per drift window."""

    drift_interval_s: float = Field(default=30.0, gt=0)
    """How often the monitor looks for a new full window."""

    drift_num_method: str = "ks"
    """Evidently stat test for numerical columns (pinned; ``ks`` gives p-values)."""

    drift_cat_method: str = "chisquare"
    """Evidently stat test for categorical columns (pinned)."""

    drift_threshold: float | None = None
    """Per-column threshold of the stat test (unset: the test's default, 0.05 for p-values)."""

    drift_share: float = Field(default=0.5, gt=0, le=1)
    """A window drifted when at least this share of its columns drifted."""

    drift_alert_windows: int = Field(default=3, ge=1)
    """K: consecutive drifted windows that raise an alert."""

    drift_report_interval_s: float = Field(default=300.0, ge=0)
    """The HTML report is rendered for a version's first window and every drifted one, and
    otherwise at most this often (0: every window). Every window gets its gauges and JSON."""

    quality_window: int = Field(default=500, ge=10)
    """Latest labelled objects the live quality gauge is computed over."""

    retrain_on_alert: bool = True
    """An alert starts ``trainers retrain --from-run <champion run>``."""

    retrain_data: str = "feedback"
    """What a retrain trains on: ``feedback`` (the labelled production traffic from the
    prediction log) or the path of a snapshot."""

    retrain_min_labels: int = Field(default=200, ge=1)
    """A retrain on feedback needs at least this many labelled objects."""

    retrain_args: str = ""
    """Extra arguments for ``trainers retrain`` (e.g. ``--min-improvement 0.01``)."""

    alert_token: str | None = None
    """Bearer token for ``POST /alerts`` (Alertmanager's webhook); unset disables it."""

    @model_validator(mode="after")
    def _no_unknown_variables(self) -> GatewaySettings:
        """A mistyped variable (``GATEWAY_MAX_BATCHSIZE``) would otherwise be ignored silently."""
        known = {f"GATEWAY_{name.upper()}" for name in type(self).model_fields}
        unknown = sorted(v for v in os.environ if v.startswith("GATEWAY_") and v not in known)
        if unknown:
            hints = []
            for variable in unknown:
                close = difflib.get_close_matches(variable, known, n=1)
                hints.append(f"{variable} (did you mean {close[0]}?)" if close else variable)
            raise ValueError(
                f"unknown setting(s): {', '.join(hints)}; the GATEWAY_* settings are listed in "
                "docs/serving.md#settings"
            )
        return self

    @property
    def model_uri(self) -> str:
        return f"models:/{self.pipeline}@{self.alias}"

    @property
    def registry_uri(self) -> str:
        """``$MLFLOW_REGISTRY_URI`` when set, else the tracking URI."""
        from trainers.tracking import registry_uri  # MLflow: only where a store is used

        return registry_uri(self.tracking_uri)

    @property
    def shared_store(self) -> str:
        return self.store_url or embedded_url(self.state_dir)

    def mlflow(self) -> MlflowClient:
        """An explicit client for the tracking and registry stores."""
        from mlflow import MlflowClient

        return MlflowClient(self.tracking_uri, self.registry_uri)
