"""Settings of one serving process, read once from the environment (prefix ``GATEWAY_``)."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from trainers.sqlstore import embedded_url

if TYPE_CHECKING:
    from mlflow import MlflowClient


def _default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``"""
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
    """Every setting of a serving worker and of the loop controller, in the order of
    :data:`GROUPS`. The docstring under each field says what it is and why one would change it;
    docs/settings.md and README.md's table are made from them (:mod:`gateway.settings_doc`)."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", extra="forbid", frozen=True, use_attribute_docstrings=True
    )

    # -- serving -------------------------------------------------------------------------------
    pipeline: str = "loans"
    """Registered model to serve (the pipeline name): another one, e.g. ``reviews``, serves that
    pipeline's champion."""

    alias: str = "champion"
    """Registry alias to serve: another one (``challenger``) puts a version on a replica before it
    is promoted."""

    tracking_uri: str = Field(default_factory=_default_tracking_uri)
    """MLflow tracking/registry URI: a tracking server's ``http://…`` where replicas and the
    controller run on several hosts."""

    poll_interval_s: float = Field(default=2.0, ge=0)
    """How often each worker (and the controller) reads the alias from the registry (0: never
    follow it): lower it for a promotion to reach every replica sooner, raise it to read the
    registry less."""

    max_bulk: int = Field(default=1000, ge=1)
    """Most objects in one bulk request (also the batch limit OIP's model config reports): raise it
    for clients that send larger lists, lower it to bound what one request may ask."""

    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    """Largest request body (and gRPC message); larger bodies get 413: raise it for bulk
    requests of large objects (long texts)."""

    request_timeout_s: float = Field(default=30.0, gt=0)
    """The data plane's limit for reading a request body and answering it: a slower request gets
    408 (body) or 504 (answer), and its connection is closed. Raise it for slow clients or a
    model that needs longer; lower it to free a stuck client's connection sooner."""

    # -- device --------------------------------------------------------------------------------
    max_batch_size: int = Field(default=64, ge=1, le=65536)
    """Most objects in one batch, and so in one forward pass: raise it where the device has room
    to spare (an accelerator), lower it to bound how long one batch takes."""

    batch_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    """How long the oldest queued object may wait for companions before its batch goes: raise it
    to fill batches under light load, lower it (0) to answer a lone request at once."""

    max_queue: int = Field(default=2048, ge=1)
    """Objects allowed to wait for the device (at least ``max_batch_size``); beyond that, 503
    with Retry-After: lower it to shed a burst sooner and keep the accepted ones' wait short,
    raise it to absorb longer bursts."""

    shared_device: Literal["auto", "on", "off"] = "auto"
    """One device batcher for all workers (``on``), one per worker (``off``), or ``auto``: shared
    when the model sits on an accelerator, per worker on the CPU (where a shared one would leave
    all but one core idle in the forward pass)."""

    device_socket: str | None = None
    """Unix socket of the shared device batcher (default: one per ``bentoml serve`` in the
    temporary directory): set it where that directory is not writable, or its path too long for
    a Unix socket."""

    device_timeout_s: float = Field(default=30.0, gt=0)
    """How long a worker waits for the shared device before answering a batch on its own copy:
    raise it for batches that take longer on the device, lower it to fall back sooner when the
    device's owner stalls."""

    bf16: bool = False
    """Run the model under bfloat16 autocast: on a CUDA GPU, for throughput at a small cost in
    precision (the CPU works but rarely gains)."""

    # -- protocols -----------------------------------------------------------------------------
    data_host: str = "0.0.0.0"
    """Address the data plane and the gRPC server bind: ``127.0.0.1`` keeps them to this host
    (behind a proxy of its own)."""

    data_port: int = Field(default=3001, ge=0, le=65535)
    """Port of the data plane every worker serves (0 turns it off; BentoML's port still answers):
    change it when 3001 is taken."""

    grpc_port: int = Field(default=3002, ge=0, le=65535)
    """Port of the Open Inference Protocol gRPC server, shared by every worker with
    ``SO_REUSEPORT`` (0: no gRPC): change it when 3002 is taken."""

    grpc_server: Literal["auto", "native", "python"] = "auto"
    """Which gRPC server each worker runs: ``native``, the ``gateway-grpc`` front that ``make``
    builds (Go; it carries the calls to the worker, which answers them), ``python``, grpc.aio in
    the worker, or ``auto``: the native front where it was built and starts, else grpc.aio. Set
    ``native`` to make a missing front an error rather than a slower fallback."""

    keep_alive_s: float = Field(default=5.0, gt=0)
    """An idle keep-alive connection to the data plane is closed after this long: raise it above
    the idle timeout of a load balancer that reuses connections, lower it to free sockets
    sooner."""

    # -- access --------------------------------------------------------------------------------
    api_key: str | None = None
    """Key every prediction must carry, in the ``x-api-key`` header (HTTP) or metadata (gRPC);
    unset: predictions are open (put the gateway behind the network policy you trust)."""

    reload_token: str | None = None
    """Bearer token for ``POST /admin/reload`` (read the alias now); unset disables the
    endpoint."""

    feedback_token: str | None = None
    """Bearer token for ``POST /feedback`` (on the serving ports and the controller); unset
    leaves feedback open to whoever may predict (it only records labels for answers given)."""

    alert_token: str | None = None
    """Bearer token for ``POST /alerts`` (Alertmanager's webhook, on the controller); unset
    disables it."""

    # -- store ---------------------------------------------------------------------------------
    state_dir: Path = Path("gateway-state")
    """Files of this process: the embedded store (when ``store_url`` is unset), and the
    controller's drift reports and retrain logs (relative paths: from the working directory).
    Put it on a volume to keep them across restarts."""

    store_url: str | None = None
    """The shared store: ``postgresql://USER@HOST:PORT/DB`` for a deployment of several replicas
    (password through ``PGPASSWORD`` or ``~/.pgpass``, never in logs), or ``sqlite:///PATH`` on
    one host (default: ``predictions.db`` in ``state_dir``)."""

    store_timeout_s: float = Field(default=5.0, gt=0)
    """How long a connection to the store may take before the caller gives up (and retries):
    raise it for a distant database, lower it to notice an outage sooner."""

    log_predictions: bool = True
    """Append every answered object with its request id to the prediction log (needed by drift,
    feedback, retraining on production traffic and ``trainers lineage <request_id>``): off for a
    gateway that only answers."""

    log_buffer: int = Field(default=20_000, ge=1)
    """Answered objects a worker keeps waiting to be written (also while the store is
    unreachable); when full, samples are dropped and counted: raise it to ride out a longer
    outage, at the memory it takes."""

    # -- loop ----------------------------------------------------------------------------------
    controller_host: str = "0.0.0.0"
    """Address the controller's HTTP API binds: ``127.0.0.1`` keeps it to this host."""

    controller_port: int = Field(default=3100, ge=0, le=65535)
    """Port of the controller's HTTP API (alerts webhook, feedback, drift, retrains, metrics):
    change it when 3100 is taken."""

    lease_ttl_s: float = Field(default=10.0, gt=0)
    """The active controller's lease lasts this long and is renewed every third of it; a
    standby takes over at most ``lease_ttl_s`` plus a third after the active one stops: lower it
    for a faster takeover, at more writes to the store."""

    drift_enabled: bool = True
    """Run the drift monitor (in the active controller): off for a controller that only takes
    feedback and alerts."""

    drift_window: int = Field(default=500, ge=20)
    """Objects per drift window: larger windows see smaller shifts, later."""

    drift_interval_s: float = Field(default=30.0, gt=0)
    """How often the monitor looks for a new full window: lower it to compare a full window
    sooner, at more reads of the store."""

    drift_num_method: str = "ks"
    """Evidently stat test for numerical columns (pinned; ``ks`` gives p-values): another of
    Evidently's tests, with a ``drift_threshold`` that suits it, changes what a drifted column
    is."""

    drift_cat_method: str = "chisquare"
    """Evidently stat test for categorical columns (pinned): as ``drift_num_method``, for the
    categorical columns."""

    drift_threshold: float | None = None
    """Per-column threshold of the stat test (unset: the test's default, 0.05 for p-values): set
    it to make a column drift more or less readily (for p-values, lower is less readily)."""

    drift_share: float = Field(default=0.5, gt=0, le=1)
    """A window drifted when at least this share of its columns drifted: lower it to alert on a
    shift in fewer columns."""

    drift_alert_windows: int = Field(default=3, ge=1)
    """K: consecutive drifted windows that raise an alert: raise it to ignore shorter shifts, at
    a later alert."""

    drift_report_interval_s: float = Field(default=300.0, ge=0)
    """The HTML report is rendered for a version's first window and every drifted one, and
    otherwise at most this often (0: every window). Every window gets its gauges and JSON.
    Raise it to spend less time rendering."""

    quality_window: int = Field(default=500, ge=10)
    """Latest labelled objects the live quality gauge is computed over: larger is steadier,
    smaller follows a change sooner."""

    retrain_on_alert: bool = True
    """An alert starts ``trainers retrain --from-run <champion run>``: off to leave retrains to a
    person (alerts are still recorded and counted)."""

    retrain_data: str = "feedback"
    """What a retrain trains on: ``feedback`` (the labelled production traffic from the
    prediction log) or the path of a snapshot (data curated elsewhere)."""

    retrain_min_labels: int = Field(default=200, ge=1)
    """A retrain on feedback needs at least this many labelled objects: raise it for retrains on
    more evidence, lower it where traffic is light."""

    retrain_args: str = ""
    """Extra arguments for ``trainers retrain`` (e.g. ``--min-improvement 0.01`` for a stricter
    gate)."""

    retrain_timeout_s: float = Field(default=3600.0, gt=0)
    """A retrain taken over from a controller that died is given up (recorded as failed) when
    its MLflow run has not finished this long after it started: raise it for retrains that take
    longer."""

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
                "docs/settings.md"
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


@dataclass(frozen=True)
class Group:
    """A group of settings: a section of docs/settings.md and a row of README.md's table."""

    title: str
    fields: tuple[str, ...]


GROUPS: dict[str, Group] = {
    "serving": Group(
        "What is served, and the limits of one request",
        (
            "pipeline",
            "alias",
            "tracking_uri",
            "poll_interval_s",
            "max_bulk",
            "max_body_bytes",
            "request_timeout_s",
        ),
    ),
    "device": Group(
        "Batching and the forward pass",
        (
            "max_batch_size",
            "batch_wait_ms",
            "max_queue",
            "shared_device",
            "device_socket",
            "device_timeout_s",
            "bf16",
        ),
    ),
    "protocols": Group(
        "Ports, servers and connections of the data plane and gRPC",
        ("data_host", "data_port", "grpc_port", "grpc_server", "keep_alive_s"),
    ),
    "access": Group(
        "Keys and tokens (unset: that door is open or off)",
        ("api_key", "reload_token", "feedback_token", "alert_token"),
    ),
    "store": Group(
        "The prediction log and the shared store (every replica appends, the loop reads)",
        ("state_dir", "store_url", "store_timeout_s", "log_predictions", "log_buffer"),
    ),
    "loop": Group(
        "The loop controller (`gateway-controller`): drift, quality, alerts, retrains",
        (
            "controller_host",
            "controller_port",
            "lease_ttl_s",
            "drift_enabled",
            "drift_window",
            "drift_interval_s",
            "drift_num_method",
            "drift_cat_method",
            "drift_threshold",
            "drift_share",
            "drift_alert_windows",
            "drift_report_interval_s",
            "quality_window",
            "retrain_on_alert",
            "retrain_data",
            "retrain_min_labels",
            "retrain_args",
            "retrain_timeout_s",
        ),
    ),
}
"""Every field of :class:`GatewaySettings` in exactly one group, in the class's order (a test
checks both): the one place groups are named. Group names are the docs' anchors."""
