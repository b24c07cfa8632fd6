"""Many workers, one device batcher: workers preprocess their own requests and send the features
to the worker that owns the device, whose batcher merges them into one forward pass."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from gateway.core import GatewayCore
from gateway.device import SharedDevice
from gateway.http import create_app
from gateway.loader import load
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from tests.conftest import FAST_LOANS, train_ok
from tests.helpers import in_process_settings, metric_samples, serve_gateway, wait_until
from tests.traffic import direct_answers, loan_variants, post_all


class SlowForward:
    """The real predictor with a device that takes 20 ms per forward pass, so that the batches
    of both workers queue behind each other and get merged."""

    def __init__(self, predictor: Any) -> None:
        self.inner = predictor

    def forward(self, features: Any) -> Any:
        time.sleep(0.02)
        return self.inner.forward(features)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _worker(
    settings: GatewaySettings, version: str | None = None, slow: bool = False
) -> GatewayCore:
    model = load(settings)
    if version is not None:  # a worker that believes it serves another version
        model = dataclasses.replace(model, version=version)
    if slow:
        model = dataclasses.replace(model, predictor=SlowForward(model.predictor))
    return GatewayCore(model, settings, GatewayMetrics())


def _ask(client: TestClient, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def one(obj: dict[str, Any]) -> dict[str, Any]:
        response = client.post("/predict", json={"application": obj})
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()["prediction"]
        return answer

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, objects))


def _metric(core: GatewayCore, name: str, labels: str = "") -> float:
    return metric_samples(core.metrics.exposition()[0].decode(), name).get(labels, 0.0)


def _same(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [g["decision"] for g in got] == [e["decision"] for e in expected]
    assert [g["default_probability"] for g in got] == pytest.approx(
        [e["default_probability"] for e in expected], abs=1e-6
    )


def test_workers_share_one_device_and_take_it_over(
    store: str, loans_data: Path, tmp_path: Path
) -> None:
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    settings = in_process_settings(
        store,
        shared_device="on",
        device_socket=str(tmp_path / "device.sock"),
    )
    objects = loan_variants(160)
    expected = direct_answers(store, objects)
    first, second = _worker(settings, slow=True), _worker(settings)
    one = TestClient(create_app(lambda: first)).__enter__()  # the first to start owns the device
    with TestClient(create_app(lambda: second)) as two:
        assert isinstance(first.device, SharedDevice)
        assert isinstance(second.device, SharedDevice)
        assert (first.device.owner, second.device.owner) == (True, False)
        assert two.get("/model").json()["device"]["owner"] is False
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda c: _ask(c, objects), [one, two]))  # both at once
        for got in answers:
            _same(got, expected)
        # Every row went through the owner's device batcher, in merged forward passes.
        assert _metric(first, "gateway_device_batch_size_sum") == 2 * len(objects)
        assert _metric(second, "gateway_device_batch_size_count") == 0
        formed = _metric(first, "gateway_batch_size_count") + _metric(
            second, "gateway_batch_size_count"
        )
        assert _metric(first, "gateway_device_batch_size_count") < formed
        fallbacks = metric_samples(
            second.metrics.exposition()[0].decode(), "gateway_device_fallbacks_total"
        )
        assert sum(fallbacks.values()) == 0

        # A worker whose version the owner does not hold answers on its own copy.
        stray = _worker(settings, version="99")
        with TestClient(create_app(lambda: stray)) as s:
            _same(_ask(s, objects[:8]), expected[:8])
        assert _metric(stray, "gateway_device_fallbacks_total", '{reason="version"}') >= 1

        # The owner stops (its lock released, its socket gone): the next batch is answered on
        # the survivor's copy, and the survivor takes the device over.
        one.__exit__(None, None, None)
        assert not Path(str(settings.device_socket)).exists()
        _same(_ask(two, objects[:1]), expected[:1])
        assert second.device.owner
        _same(_ask(two, objects), expected)
    assert _metric(second, "gateway_device_fallbacks_total", '{reason="unreachable"}') == 1
    assert _metric(second, "gateway_device_batch_size_sum") == len(objects) + 1


@pytest.fixture(scope="module")
def shared_gateway(
    tmp_path_factory: pytest.TempPathFactory, loans_data: Path
) -> Iterator[tuple[str, str, str]]:
    root = tmp_path_factory.mktemp("shared-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    train_ok(uri, "loans", "--data", str(loans_data), *FAST_LOANS)
    with serve_gateway(uri, root, settings={"shared_device": "on"}) as (base, data):
        yield uri, base, data


def test_bentoml_workers_feed_one_device_batcher(shared_gateway: tuple[str, str, str]) -> None:
    uri, base, data = shared_gateway
    roles: dict[int, bool] = {}

    def both_workers_seen() -> bool:  # the kernel spreads connections over the workers
        device = httpx.get(f"{data}/model", headers={"connection": "close"}).json()["device"]
        roles[device["worker_pid"]] = device["owner"]
        return len(roles) == 2

    # BentoML is ready when one worker is; the other's data plane may still be starting
    wait_until(both_workers_seen, 60, "both workers' data planes")
    assert sorted(roles.values()) == [False, True]

    objects = loan_variants(300)
    responses = asyncio.run(post_all(data, objects))
    assert [r.status_code for r in responses] == [200] * len(objects)
    _same([r.json()["prediction"] for r in responses], direct_answers(uri, objects))
    text = httpx.get(f"{base}/metrics").text
    assert metric_samples(text, "gateway_device_batch_size_sum")[""] >= len(objects)
    fallbacks = metric_samples(text, "gateway_device_fallbacks_total")
    assert sum(fallbacks.values()) == 0, fallbacks
