"""Adding a pipeline is one package: train, register and serve it through the gateway core
without touching anything else."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

import trainers.pipelines
from gateway.core import GatewayCore
from gateway.http import create_app
from gateway.loader import load
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from tests.conftest import train_ok
from tests.helpers import cli

EXTRA = Path(__file__).parents[1] / "fixtures" / "extra_pipelines"


@pytest.fixture
def with_thermostat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainers.pipelines, "__path__", [*trainers.pipelines.__path__, str(EXTRA)])


def test_a_new_package_is_a_new_pipeline(with_thermostat: None, store: str, tmp_path: Path) -> None:
    assert "thermostat" in trainers.pipelines.available()
    data = tmp_path / "thermostat.parquet"
    assert cli(store, "data", "thermostat", "--out", str(data), "--rows", "800").exit_code == 0
    output = train_ok(store, "thermostat", "--data", str(data))
    assert "gate promoted" in output

    settings = GatewaySettings(
        pipeline="thermostat", tracking_uri=store, data_port=0, grpc_port=0, poll_interval_s=0
    )
    core = GatewayCore(load(settings), settings, GatewayMetrics())
    with TestClient(create_app(lambda: core)) as client:
        check_thermostat(client)


def check_thermostat(client: TestClient) -> None:
    cold = client.post("/predict", json={"reading": {"temperature": 5.0, "room": "kitchen"}})
    warm = client.post("/predict", json={"reading": {"temperature": 30.0, "room": "bedroom"}})
    assert cold.json()["prediction"] == {"heat": True}
    assert warm.json()["prediction"] == {"heat": False}
    assert cold.headers["x-model-name"] == "thermostat"
    bad = client.post("/predict", json={"reading": {"temperature": 5.0, "room": "attic"}})
    assert bad.status_code == 422
    assert "'kitchen' or 'bedroom'" in bad.text
