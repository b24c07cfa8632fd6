"""The same logged model behind real servers: ``mlflow models serve`` and ``bentoml serve``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest

from tests.conftest import FAST_LOANS, train_ok
from tests.helpers import REPO, VENV_BIN, free_port, http_ok, process, wait_until
from trainers import pipelines
from trainers.packaging import unwrap

APPLICATION = {
    "income": 61000.0,
    "age": 45,
    "loan_amount": 15000.0,
    "term_months": 36,
    "employment_status": "self_employed",
    "purpose": "home_improvement",
    "existing_debt": 4000.0,
}
YOUNG = {
    "income": 12000.0,
    "age": 21,
    "loan_amount": 25000.0,
    "term_months": 60,
    "employment_status": "student",
    "purpose": "education",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, loans_data: Path) -> str:
    """A store with one loans champion (module-scoped: the servers only read it)."""
    root = tmp_path_factory.mktemp("serving-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    train_ok(uri, "loans", "--data", str(loans_data), *FAST_LOANS)
    return uri


def direct_answers(uri: str, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    predictor = unwrap(mlflow.pyfunc.load_model("models:/loans@champion")).predictor
    loans = pipelines.get("loans")
    return [a.model_dump() for a in predictor.predict_batch([loans.Input(**o) for o in objects])]


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
def gateway(trained: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``bentoml serve`` of the repository's bentofile, on a free port."""
    logs = tmp_path_factory.mktemp("bento")
    port = free_port()
    args = [str(VENV_BIN / "bentoml"), "serve", "--port", str(port), "--host", "127.0.0.1"]
    env = {
        "GATEWAY_TRACKING_URI": trained,
        "GATEWAY_PIPELINE": "loans",
        "BENTOML_HOME": str(logs / "bentoml-home"),
    }
    with process(args, cwd=REPO, env=env, log=logs / "bentoml.log") as proc:
        base = f"http://127.0.0.1:{port}"
        wait_until(http_ok(f"{base}/readyz"), 120, "bentoml serve", proc)
        yield base


def test_gateway_answers_business_objects_with_lineage(gateway: str, trained: str) -> None:
    expected = direct_answers(trained, [APPLICATION, YOUNG])
    mlflow.set_tracking_uri(trained)
    version = mlflow.MlflowClient(trained, trained).get_model_version_by_alias("loans", "champion")
    for application, answer in zip([APPLICATION, YOUNG], expected, strict=True):
        response = httpx.post(f"{gateway}/predict", json={"application": application}, timeout=30)
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


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragments"),
    [
        ("{not json", {"content-type": "application/json"}, 400, ["not valid JSON"]),
        (
            '{"application": {"income": NaN}}',
            {"content-type": "application/json"},
            400,
            ["NaN is not a valid JSON number"],
        ),
        ('{"application": {}}', {"content-type": "text/plain"}, 415, ["application/json"]),
        ("[1, 2]", {"content-type": "application/json"}, 422, ["'application'"]),
        (
            '{"applicant": {}}',
            {"content-type": "application/json"},
            422,
            ["applicant", "expected exactly one key 'application'"],
        ),
        (
            '{"application": {"income": -1, "age": 30, "loan_amount": 100, "term_months": 13, '
            '"employment_status": "astronaut", "purpose": "car"}}',
            {"content-type": "application/json"},
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
        (
            '{"application": {"age": 30}}',
            {"content-type": "application/json"},
            422,
            ["application.income: Field required"],
        ),
    ],
)
def test_gateway_refuses_bad_input_and_keeps_serving(
    gateway: str, body: str, headers: dict[str, str], status: int, fragments: list[str]
) -> None:
    response = httpx.post(f"{gateway}/predict", content=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    for fragment in fragments:
        assert fragment in response.text
    ok = httpx.post(f"{gateway}/predict", json={"application": APPLICATION}, timeout=30)
    assert ok.status_code == 200
