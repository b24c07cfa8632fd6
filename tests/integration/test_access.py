"""Who gets in: an API key on every prediction path (HTTP header, gRPC metadata), bearer tokens
on the admin and loop paths (off without one: 404; 401 without, 403 with a wrong one), no
secret in any log line, metric, error body, MLflow param or tag, or lineage output; and a
mistyped setting stops the process instead of being ignored."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from mlflow import MlflowClient
from starlette.testclient import TestClient
from tritonclient.utils import InferenceServerException

from gateway.core import GatewayCore
from gateway.http import create_app
from gateway.loader import load
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from tests.helpers import (
    REPO,
    VENV_BIN,
    cli,
    free_port,
    in_process_settings,
    metric_samples,
    serve_gateway,
)
from tests.traffic import columns, objects

API_KEY = "key-7f3e9a1c5b"
RELOAD = "reload-4d2b8e6f0a"
FEEDBACK = "feedback-9c1a7e3d5f"
DB_PASSWORD = "pgpass-2e8c4a6b1d"
SECRETS = (API_KEY, RELOAD, FEEDBACK, DB_PASSWORD)
APPLICATION = objects(1, 0.0, 3)[0][0]


@dataclass(frozen=True)
class Guarded:
    base: str
    data: str
    grpc: str
    log: Path


@pytest.fixture(scope="module")
def guarded(trained: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    """A gateway with an API key and tokens, whose shared store (PostgreSQL, with a password in
    its URL) cannot be reached: the workers log about it, and those lines must not show it."""
    logs = tmp_path_factory.mktemp("guarded")
    grpc_port = free_port()
    unreachable = f"postgresql://gateway:{DB_PASSWORD}@127.0.0.1:{free_port()}/gateway"
    settings = {
        "api_key": API_KEY,
        "reload_token": RELOAD,
        "feedback_token": FEEDBACK,
        "store_url": unreachable,
        "store_timeout_s": "1",
        "grpc_port": str(grpc_port),
    }
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PGPASSWORD", DB_PASSWORD)
        with serve_gateway(trained, logs, workers=1, settings=settings) as (base, data):
            yield Guarded(base, data, f"127.0.0.1:{grpc_port}", logs / "bentoml.log")


PREDICTIONS = [
    ("base", "/predict", {"application": APPLICATION}),
    ("base", "/predict/bulk", {"applications": [APPLICATION]}),
    ("data", "/predict", {"application": APPLICATION}),
    ("data", "/predict/bulk", {"applications": [APPLICATION]}),
]


@pytest.mark.parametrize(("port", "path", "body"), PREDICTIONS)
def test_every_http_prediction_path_needs_the_api_key(
    guarded: Guarded, port: str, path: str, body: dict[str, object]
) -> None:
    url = getattr(guarded, port) + path
    missing = httpx.post(url, json=body, timeout=30)
    assert missing.status_code == 401, missing.text
    assert "x-api-key" in missing.json()["error"]
    wrong = httpx.post(url, json=body, headers={"x-api-key": "not-the-key"}, timeout=30)
    assert wrong.status_code == 403, wrong.text
    right = httpx.post(url, json=body, headers={"x-api-key": API_KEY}, timeout=30)
    assert right.status_code == 200, right.text
    # what is not a prediction stays open: probes, the model's description, metrics
    assert httpx.get(f"{guarded.data}/model", timeout=10).status_code == 200


def test_oip_rest_and_grpc_need_the_api_key(guarded: Guarded) -> None:
    meta = httpx.get(f"{guarded.data}/v2/models/loans", timeout=10).json()
    rest = httpclient.InferenceServerClient(guarded.data.removeprefix("http://"))
    rpc = grpcclient.InferenceServerClient(guarded.grpc)
    for client, module, codes in (
        (rest, httpclient, ("401", "403")),
        (rpc, grpcclient, ("StatusCode.UNAUTHENTICATED", "StatusCode.PERMISSION_DENIED")),
    ):
        inputs = []
        for name, datatype, array in columns(meta["inputs"], [APPLICATION]):
            tensor = module.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        for headers, expected in zip((None, {"x-api-key": "not-the-key"}), codes, strict=True):
            with pytest.raises(InferenceServerException) as refused:
                client.infer("loans", inputs, headers=headers)
            assert str(refused.value.status()) == expected, refused.value
            assert "x-api-key" in str(refused.value.message())
        answered = client.infer("loans", inputs, headers={"x-api-key": API_KEY})
        assert answered.as_numpy("decision") is not None
        assert client.is_server_ready()  # health and metadata need no key
        client.close()


def test_admin_and_feedback_need_their_bearer_tokens(guarded: Guarded) -> None:
    reload = f"{guarded.data}/admin/reload"
    missing = httpx.post(reload, timeout=30)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(reload, headers={"authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 403
    right = httpx.post(reload, headers={"authorization": f"Bearer {RELOAD}"}, timeout=30)
    assert right.status_code == 200, right.text

    feedback = f"{guarded.data}/feedback"
    label = {"request_id": "0123456789-1", "label": 1}
    assert httpx.post(feedback, json=label, timeout=30).status_code == 401
    assert (
        httpx.post(feedback, json=label, headers={"authorization": "Bearer x"}).status_code == 403
    )
    admitted = httpx.post(
        feedback, json=label, headers={"authorization": f"Bearer {FEEDBACK}"}, timeout=30
    )
    assert admitted.status_code == 503, admitted.text  # let in; the store is down (see fixture)
    assert DB_PASSWORD not in admitted.text


def test_no_secret_in_logs_metrics_or_error_bodies(guarded: Guarded) -> None:
    bodies = [
        httpx.post(f"{guarded.data}/predict", json={}, headers={"x-api-key": s}).text
        for s in (*SECRETS, API_KEY + "x")
    ]
    bodies.append(httpx.post(f"{guarded.base}/predict", json={"application": {}}).text)
    texts = {
        "log": guarded.log.read_text(errors="replace"),
        "metrics (data plane)": httpx.get(f"{guarded.data}/metrics", timeout=10).text,
        "metrics (BentoML)": httpx.get(f"{guarded.base}/metrics", timeout=10).text,
        "error bodies": "\n".join(bodies),
    }
    assert "gateway:***@" in texts["log"]  # the store's URL was logged, without its password
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} appears in the {where}"


def test_no_secret_in_mlflow_params_tags_or_lineage(
    store: str, loans_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in (
        ("GATEWAY_API_KEY", API_KEY),
        ("GATEWAY_RELOAD_TOKEN", RELOAD),
        ("PGPASSWORD", DB_PASSWORD),
        ("MLFLOW_TRACKING_PASSWORD", DB_PASSWORD),
    ):
        monkeypatch.setenv(variable, value)
    trained = cli(store, "train", "loans", "--data", str(loans_data), "--param", "epochs=1")
    assert trained.exit_code == 0, trained.output
    lineage = cli(store, "lineage", "loans@champion", "--json")
    client = MlflowClient(store, store)
    (run,) = client.search_runs([client.get_experiment_by_name("loans").experiment_id])  # type: ignore[union-attr]
    recorded = f"{run.data.params} {run.data.tags} {trained.output} {lineage.output}"
    for secret in SECRETS:
        assert secret not in recorded


def test_paths_without_a_token_are_off(trained: str) -> None:
    settings = in_process_settings(trained, log_predictions=False)
    core = GatewayCore(load(settings), settings, GatewayMetrics())
    with TestClient(create_app(lambda: core)) as client:
        off = client.post("/admin/reload", headers={"authorization": f"Bearer {RELOAD}"})
        assert off.status_code == 404
        assert "disabled" in off.json()["error"]
        assert client.post("/predict", json={"application": APPLICATION}).status_code == 200


def test_validation_error_labels_come_from_the_schema_only(trained: str) -> None:
    settings = in_process_settings(trained, log_predictions=False)
    core = GatewayCore(load(settings), settings, GatewayMetrics())
    with TestClient(create_app(lambda: core)) as client:
        for i in range(40):
            junk = {**APPLICATION, f"junk_{i}": 1}
            assert client.post("/predict", json={"application": junk}).status_code == 422
            assert client.post("/predict", json={f"key_{i}": APPLICATION}).status_code == 422
            bulk = {"applications": [{**APPLICATION, "income": f"{i}"}]}
            assert client.post("/predict/bulk", json=bulk).status_code == 422
        series = metric_samples(client.get("/metrics").text, "gateway_validation_errors_total")
    assert series == {
        '{field="application.unknown"}': 40.0,
        '{field="unknown"}': 40.0,
        '{field="applications.income"}': 40.0,
    }


def test_a_mistyped_setting_stops_the_process(
    trained: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_MAX_BATCHSIZE", "8")
    with pytest.raises(ValueError, match=r"GATEWAY_MAX_BATCHSIZE.*GATEWAY_MAX_BATCH_SIZE"):
        GatewaySettings()
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "GATEWAY_TRACKING_URI": trained,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    for program in (["bentoml", "serve", "--port", str(free_port())], ["gateway-controller"]):
        ran = subprocess.run(
            [str(VENV_BIN / program[0]), *program[1:]],
            cwd=REPO,
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.returncode != 0, program
        output = ran.stdout + ran.stderr
        assert "unknown setting(s): GATEWAY_MAX_BATCHSIZE" in output, output[-2000:]
        assert "did you mean GATEWAY_MAX_BATCH_SIZE?" in output
