"""The logged MLflow model is self-contained: a clean virtualenv with only the model's own
``requirements.txt`` — nothing of this project installed — serves it with `mlflow models serve`,
and the answers are the gateway's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import mlflow
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from gateway.core import GatewayCore
from gateway.http import create_app
from gateway.loader import load
from gateway.metrics import GatewayMetrics
from tests.conftest import FAST_LOANS, train_ok
from tests.helpers import clean_venv, free_port, http_ok, in_process_settings, process, wait_until
from tests.traffic import objects


def gateway_answers(store: str, state: Path, sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    settings = in_process_settings(store, state_dir=state, log_predictions=False)
    core = GatewayCore(load(settings), settings, GatewayMetrics())
    with TestClient(create_app(lambda: core)) as client:
        answer = client.post("/predict/bulk", json={"applications": sent})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["predictions"])


@pytest.mark.e2e
def test_mlflow_models_serve_runs_the_model_from_its_own_requirements(
    store: str, loans_data: Path, tmp_path: Path
) -> None:
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    model_dir = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri="models:/loans@champion",
            dst_path=str(tmp_path / "model"),
            tracking_uri=store,
            registry_uri=store,
        )
    )
    requirements = model_dir / "requirements.txt"
    assert {line.split("==")[0] for line in requirements.read_text().split()} >= {
        "mlflow",
        "torch",
        "pandas",
        "pydantic",
        "safetensors",
    }
    assert (model_dir / "code" / "trainers" / "pipelines" / "loans" / "__init__.py").exists()
    venv = clean_venv(tmp_path / "venv", requirements, log=tmp_path / "pip.log")
    assert not list((venv.parent / "lib").glob("python*/site-packages/trainers"))

    port = free_port()
    args = [str(venv / "mlflow"), "models", "serve", "-m", "models:/loans@champion"]
    args += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    env = {
        "PATH": f"{venv}:/usr/bin:/bin",  # the model's environment only
        "HOME": str(tmp_path),
        "MLFLOW_TRACKING_URI": store,
    }
    sent, _ = objects(40, shift=0.3, seed=3)
    frame = pd.DataFrame(sent)
    body = {"dataframe_split": frame.astype(object).where(frame.notna(), None).to_dict("split")}
    with process(args, cwd=tmp_path, env=env, log=tmp_path / "serve.log", inherit_path=False) as p:
        wait_until(http_ok(f"http://127.0.0.1:{port}/ping"), 120, "mlflow models serve", p)
        answer = httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    served = answer.json()["predictions"]

    expected = gateway_answers(store, tmp_path / "state", sent)
    assert [s["decision"] for s in served] == [e["decision"] for e in expected]
    # the same weights and code; float32 kernels may differ in the last bits between processes
    assert [s["default_probability"] for s in served] == pytest.approx(
        [e["default_probability"] for e in expected], abs=1e-6
    )
