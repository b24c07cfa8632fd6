"""Prometheus metrics of the gateway, correct with several workers.

Built per worker process (never at import), so ``prometheus_client`` sees the
``PROMETHEUS_MULTIPROC_DIR`` BentoML sets for its workers; every sample lands in that directory and
BentoML's ``/metrics`` (and the data plane's) merge all workers. Nothing here may fail a request:
callers go through :meth:`GatewayMetrics.safely`.
"""

from __future__ import annotations

import logging
import os
import typing
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.context_managers import Timer
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import BaseModel

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STAGES = ("validate", "preprocess", "model", "postprocess")
FALLBACK_REASONS = ("unreachable", "version", "error", "unsupported")
MONITOR_STAGES = ("log", "drift", "quality", "report", "mlflow")
RETRAIN_RESULTS = ("promoted", "rejected", "failed", "skipped")


def outcome_field(output: type[BaseModel]) -> str | None:
    """The output field that names a class (the first Literal or bool field), if any."""
    for name, info in output.model_fields.items():
        if typing.get_origin(info.annotation) is typing.Literal or info.annotation is bool:
            return name
    return None


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._served: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self._stages: dict[str, Histogram] = {}
        self.requests = Counter(
            "gateway_requests_total",
            "Requests by endpoint and HTTP status code (gRPC calls: by method path, with the HTTP "
            "status their gRPC code stands for)",
            ["endpoint", "status"],
            registry=r,
        )
        self.predictions = Counter(
            "gateway_predictions_total",
            "Objects answered, by model, version and predicted class",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "gateway_stage_seconds",
            "Time per stage (validate per request; the rest per batch)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to answer, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "gateway_batch_size",
            "Objects per batch a worker forms",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.device_batch_size = Histogram(
            "gateway_device_batch_size",
            "Rows per forward pass on the device (batches of several workers merged when shared)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.device_fallbacks = Counter(
            "gateway_device_fallbacks_total",
            "Batches a worker ran on its own copy because the shared device could not take them",
            ["reason"],
            registry=r,
        )
        self.batch_wait = Histogram(
            "gateway_batch_wait_seconds",
            "How long a batch's oldest object queued",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "gateway_queue_depth",
            "Objects waiting for the device (all workers)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            "gateway_model_info",
            "1 for the model version each worker serves",
            ["model", "version", "run_id"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.swaps = Counter(
            "gateway_model_swaps_total",
            "Model swaps by result (swapped, refused)",
            ["model", "result"],
            registry=r,
        )
        self.rollbacks = Counter(
            "gateway_model_rollbacks_total",
            "Swaps back to an earlier version",
            ["model"],
            registry=r,
        )
        self.validation_errors = Counter(
            "gateway_validation_errors_total",
            "Refused inputs by field",
            ["field"],
            registry=r,
        )
        self.shed = Counter(
            "gateway_requests_shed_total",
            "Requests refused with 503 because the queue was full",
            ["endpoint"],
            registry=r,
        )
        # -- the loop ---------------------------------------------------------------------------
        self.samples_dropped = Counter(
            "gateway_monitor_samples_dropped_total",
            "Answered objects not written to the prediction log because its buffer was full",
            registry=r,
        )
        self.log_cpu = Counter(
            "gateway_prediction_log_cpu_seconds_total",
            "CPU seconds the prediction log spent: serialising answered batches in the batch "
            "thread, inserting them in its writer thread",
            registry=r,
        )
        self.monitor_errors = Counter(
            "gateway_monitor_errors_total",
            "Failures of the monitoring side (they never fail a prediction), by stage",
            ["stage"],
            registry=r,
        )
        self.drift_share = Gauge(
            "gateway_drift_share",
            "Share of drifted columns in the latest drift window",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_score = Gauge(
            "gateway_drift_score",
            "Stat test score per column in the latest window (p-value for ks/chisquare)",
            ["model", "column", "method"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_detected = Gauge(
            "gateway_drift_detected",
            "1 when the latest window drifted",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_windows = Counter(
            "gateway_drift_windows_total",
            "Drift windows evaluated, by result (drifted, clean)",
            ["model", "result"],
            registry=r,
        )
        self.drift_alerts = Counter(
            "gateway_drift_alerts_total",
            "Alerts that started the retrain path, by source (monitor, alertmanager)",
            ["model", "source"],
            registry=r,
        )
        self.live_quality = Gauge(
            "gateway_live_quality",
            "The pipeline's metric over the latest labelled objects (ground truth via /feedback)",
            ["model", "version", "metric"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.labelled = Gauge(
            "gateway_labelled_objects",
            "Labelled objects the live quality gauge is computed over",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.feedback = Counter(
            "gateway_feedback_total",
            "Ground-truth labels received, by result (recorded, refused)",
            ["result"],
            registry=r,
        )
        self.retrains = Counter(
            "gateway_retrains_total",
            "Retrains started by alerts, by result (promoted, rejected, failed, skipped)",
            ["model", "result"],
            registry=r,
        )
        self.retrain_running = Gauge(
            "gateway_retrain_running",
            "1 while a retrain started by this service runs",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.controller_active = Gauge(
            "gateway_controller_active",
            "1 while this loop controller holds the lease (runs drift, alerts and retrains)",
            ["model"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.metric_errors = Counter(
            "gateway_metric_errors_total",
            "Failures while recording metrics",
            registry=r,
        )

    def declare(self, model: str, endpoints: tuple[str, ...]) -> None:
        """Create the labelled series that may stay at zero, so they are exported from the start."""
        for result in ("swapped", "refused"):
            self.swaps.labels(model, result)
        self.rollbacks.labels(model)
        for endpoint in endpoints:
            self.shed.labels(endpoint)
        for reason in FALLBACK_REASONS:
            self.device_fallbacks.labels(reason)
        for stage in MONITOR_STAGES:
            self.monitor_errors.labels(stage)
        for result in ("drifted", "clean"):
            self.drift_windows.labels(model, result)
        for source in ("monitor", "alertmanager"):
            self.drift_alerts.labels(model, source)
        for result in RETRAIN_RESULTS:
            self.retrains.labels(model, result)
        self.retrain_running.labels(model)
        for result in ("recorded", "refused"):
            self.feedback.labels(result)

    def safely(self, record: Callable[[], Any]) -> None:
        """Run ``record``; a failure is logged and counted, never raised."""
        try:
            record()
        except Exception:
            log.exception("recording a metric failed")
            with suppress(Exception):
                self.metric_errors.inc()

    def served(self, endpoint: str, status: int, elapsed: float, count: int = 1) -> None:
        """``count`` requests answered (or refused) by ``endpoint`` in ``elapsed`` seconds each."""
        series = self._served.get((endpoint, status))
        if series is None:  # looking labels up costs more than recording: once per pair
            series = self._served[(endpoint, status)] = (
                self.requests.labels(endpoint, str(status)),
                self.request_seconds.labels(endpoint),
            )
        series[0].inc(count)
        for _ in range(count):
            series[1].observe(elapsed)

    def timed(self, stage: str) -> Timer:
        """Time a ``with`` block as ``stage`` of the pipeline."""
        series = self._stages.get(stage)
        if series is None:
            series = self._stages[stage] = self.stage_seconds.labels(stage)
        return series.time()

    def exposition(self) -> tuple[bytes, str]:
        """All workers' samples when running under a multiprocess directory, else this one's."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
