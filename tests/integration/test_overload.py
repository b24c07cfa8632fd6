"""Beyond capacity the gateway refuses quickly (503 + Retry-After, counted) instead of piling up
timeouts, and keeps answering once the load passes."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from gateway.core import GatewayCore
from gateway.http import create_app
from gateway.loader import load
from gateway.metrics import GatewayMetrics
from tests.conftest import FAST_LOANS, train_ok
from tests.helpers import in_process_settings, metric_samples
from tests.traffic import APPLICATION


class SlowDevice:
    """The real predictor, with a device that takes 0.3 s per batch."""

    def __init__(self, predictor: Any) -> None:
        self.inner = predictor
        self.device = predictor.device

    def preprocess(self, inputs: Any) -> Any:
        return self.inner.preprocess(inputs)

    def forward(self, features: Any) -> Any:
        time.sleep(0.3)
        return self.inner.forward(features)

    def postprocess(self, raw: Any, inputs: Any) -> Any:
        return self.inner.postprocess(raw, inputs)


def test_excess_load_gets_503_with_retry_after(store: str, loans_data: Path) -> None:
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    settings = in_process_settings(
        store,
        max_batch_size=1,
        max_queue=2,
    )
    model = load(settings)
    slow = dataclasses.replace(model, predictor=SlowDevice(model.predictor))
    core = GatewayCore(slow, settings, GatewayMetrics())
    with TestClient(create_app(lambda: core)) as client:

        def call(_: int) -> Any:
            return client.post("/predict", json={"application": APPLICATION})

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(call, range(8)))
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 503}
        refused = [r for r in responses if r.status_code == 503]
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert all("overloaded" in r.json()["error"] for r in refused)
        assert client.post("/predict", json={"application": APPLICATION}).status_code == 200
        shed = metric_samples(client.get("/metrics").text, "gateway_requests_shed_total")
        assert shed['{endpoint="/predict"}'] == len(refused)
