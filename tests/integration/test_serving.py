"""The same logged model behind real servers: ``mlflow models serve`` and ``bentoml serve``."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest

from tests.helpers import (
    VENV_BIN,
    free_port,
    http_ok,
    metric_samples,
    process,
    serve_gateway,
    wait_until,
)
from tests.monitoring import documented_metrics
from tests.traffic import APPLICATION, YOUNG, direct_answers, loan_variants, post_all


def test_mlflow_models_serve_answers_the_same_artifact(trained: str, tmp_path: Path) -> None:
    port = free_port()
    args = [
        str(VENV_BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        "models:/loans@champion",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with process(
        args, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": trained}, log=tmp_path / "mlflow-serve.log"
    ) as proc:
        wait_until(http_ok(f"http://127.0.0.1:{port}/ping"), 90, "mlflow models serve", proc)
        response = httpx.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"dataframe_records": [APPLICATION, YOUNG]},
            timeout=30,
        )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = direct_answers(trained, [APPLICATION, YOUNG])
    assert [p["decision"] for p in predictions] == [e["decision"] for e in expected]
    assert [p["default_probability"] for p in predictions] == pytest.approx(
        [e["default_probability"] for e in expected], abs=1e-6
    )


@pytest.fixture(scope="module")
def gateway(trained: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real two-worker ``bentoml serve``: BentoML's port and the data plane's."""
    with serve_gateway(trained, tmp_path_factory.mktemp("bento")) as ports:
        yield ports


def test_gateway_answers_business_objects_with_lineage(
    gateway: tuple[str, str], trained: str
) -> None:
    expected = direct_answers(trained, [APPLICATION, YOUNG])
    mlflow.set_tracking_uri(trained)
    version = mlflow.MlflowClient(trained, trained).get_model_version_by_alias("loans", "champion")
    for base, (application, answer) in itertools.product(
        gateway, zip([APPLICATION, YOUNG], expected, strict=True)
    ):
        response = httpx.post(f"{base}/predict", json={"application": application}, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        # float32 kernels may differ in the last bits between processes (threads, BLAS path)
        assert body["prediction"]["decision"] == answer["decision"]
        assert body["prediction"]["default_probability"] == pytest.approx(
            answer["default_probability"], abs=1e-6
        )
        assert (body["model_name"], body["model_version"], body["run_id"]) == (
            "loans",
            str(version.version),
            version.run_id,
        )
        assert response.headers["x-model-version"] == str(version.version)
        assert response.headers["x-run-id"] == version.run_id


JSON = {"content-type": "application/json"}
VALID = json.dumps(APPLICATION)
BAD_INPUT = [
    ("/predict", "{not json", JSON, 400, ["not valid JSON"]),
    ("/predict", '{"application": {"income": NaN}}', JSON, 400, ["NaN is not a valid JSON"]),
    ("/predict", '{"application": {"income": Infinity}}', JSON, 400, ["Infinity is not a valid"]),
    ("/predict", VALID, {"content-type": "text/plain"}, 415, ["must be application/json"]),
    ("/predict", "[1, 2]", JSON, 422, ["'application'"]),
    ("/predict", '{"applicant": {}}', JSON, 422, ["applicant", "exactly one key 'application'"]),
    (
        "/predict",
        '{"application": {"income": -1, "age": 30, "loan_amount": 100, "term_months": 13, '
        '"employment_status": "astronaut", "purpose": "car"}}',
        JSON,
        422,
        [
            "application.income",
            "greater than or equal to 0",
            "application.term_months",
            "12, 24, 36, 48 or 60",
            "application.employment_status",
            "'retired'",
        ],
    ),
    ("/predict", '{"application": {"age": 30}}', JSON, 422, ["application.income: Field required"]),
    ("/predict", '{"application": {"age": "old"}}', JSON, 422, ["application.age", "integer"]),
    (
        "/predict",
        json.dumps({"application": {**APPLICATION, "pet": "cat"}}),
        JSON,
        422,
        ["application.pet", "Extra inputs are not permitted"],
    ),
    (
        "/predict/bulk",
        json.dumps({"applications": [APPLICATION] * 1001}),
        JSON,
        422,
        ["applications must be a list of 1 to 1000 objects, got 1001 items"],
    ),
    ("/predict/bulk", '{"applications": []}', JSON, 422, ["got 0 items"]),
    (
        "/predict/bulk",
        json.dumps({"applications": [APPLICATION, {**APPLICATION, "age": 7}]}),
        JSON,
        422,
        ["applications.1.age", "greater than or equal to 18"],
    ),
    (
        "/predict",
        json.dumps({"application": {**APPLICATION, "purpose": "x" * 3_000_000}}),
        JSON,
        413,
        ["exceeds the limit of 2097152"],
    ),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "fragments"), BAD_INPUT)
def test_gateway_refuses_bad_input_and_keeps_serving(
    gateway: tuple[str, str],
    path: str,
    body: str,
    headers: dict[str, str],
    status: int,
    fragments: list[str],
) -> None:
    _, data = gateway  # the data plane's contract (BentoML's port: test_bentoml_api.py)
    response = httpx.post(f"{data}{path}", content=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    for fragment in fragments:
        assert fragment in response.text
    ok = httpx.post(f"{data}/predict", json={"application": APPLICATION}, timeout=30)
    assert ok.status_code == 200


def test_concurrent_calls_are_batched_and_answered_correctly(
    gateway: tuple[str, str], trained: str
) -> None:
    base, data = gateway
    objects = loan_variants(300)
    before = metric_samples(httpx.get(f"{base}/metrics").text, "gateway_batch_size_count")
    responses = asyncio.run(post_all(data, objects))
    assert [r.status_code for r in responses] == [200] * len(objects)
    expected = direct_answers(trained, objects)
    for response, answer in zip(responses, expected, strict=True):
        got = response.json()["prediction"]
        assert got["decision"] == answer["decision"]
        assert got["default_probability"] == pytest.approx(answer["default_probability"], abs=1e-6)
    text = httpx.get(f"{base}/metrics").text
    batches = metric_samples(text, "gateway_batch_size_count")[""] - before.get("", 0.0)
    rows = metric_samples(text, "gateway_batch_size_sum")[""]
    assert 0 < batches < len(objects)  # answered in fewer batches than requests
    assert rows / metric_samples(text, "gateway_batch_size_count")[""] > 1

    bulk = httpx.post(f"{data}/predict/bulk", json={"applications": objects[:50]}, timeout=30)
    assert bulk.status_code == 200
    assert [p["decision"] for p in bulk.json()["predictions"]] == [
        a["decision"] for a in expected[:50]
    ]


def test_model_live_ready_and_every_documented_metric(gateway: tuple[str, str]) -> None:
    base, data = gateway
    for url in gateway:
        assert httpx.get(f"{url}/live").json() == {"live": True}
        assert httpx.get(f"{url}/ready").json()["ready"] is True
        info = httpx.get(f"{url}/model").json()
        assert info["model_name"] == "loans"
        assert info["input_schema"]["properties"]["age"]["minimum"] == 18
        assert "decision" in info["output_schema"]["properties"]
    httpx.post(f"{data}/predict", json={"application": {"age": 3}})  # a validation error
    httpx.post(f"{data}/predict", json={"application": APPLICATION})
    documented = documented_metrics("### Metrics")
    assert len(documented) >= 10
    for url in gateway:
        text = httpx.get(f"{url}/metrics").text
        missing = [
            name
            for name in documented
            if not (metric_samples(text, name) or metric_samples(text, f"{name}_count"))
        ]
        assert not missing, f"documented but not exported on {url}: {missing}"
    info = metric_samples(httpx.get(f"{base}/metrics").text, "gateway_model_info")
    assert list(info.values()) == [1.0]


def test_openapi_document_shows_the_business_schemas(gateway: tuple[str, str]) -> None:
    base, _ = gateway
    spec = httpx.get(f"{base}/docs.json").json()
    schemas = spec["components"]["schemas"]

    def resolved(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref", "")
        return resolved(schemas[ref.rsplit("/", 1)[1]]) if ref else schema

    predict = spec["paths"]["/predict"]["post"]
    schema = predict["requestBody"]["content"]["application/json"]["schema"]
    application = resolved(schema["properties"]["application"])
    assert application["properties"]["age"]["minimum"] == 18
    assert application["properties"]["term_months"]["enum"] == [12, 24, 36, 48, 60]
    assert "employment_status" in application["required"]
    answer = resolved(predict["responses"]["200"]["content"]["application/json"]["schema"])
    decision = resolved(answer["properties"]["prediction"])["properties"]["decision"]
    assert decision["enum"] == ["approve", "review", "decline"]
    assert {"model_version", "run_id", "request_id"} <= set(answer["required"])
    bulk = spec["paths"]["/predict/bulk"]["post"]["requestBody"]["content"]["application/json"]
    assert "applications" in bulk["schema"]["properties"]
    assert "/feedback" in spec["paths"]  # the mounted gateway routes are documented too
