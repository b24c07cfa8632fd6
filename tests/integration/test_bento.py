"""`make bento` builds a self-contained bento: the champion is inside, labelled with its lineage,
and `bentoml serve <tag>` answers with the tracking store gone."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import tritonclient.grpc as grpcclient
from mlflow import MlflowClient

from tests.conftest import FAST_LOANS, train_ok
from tests.helpers import REPO, VENV_BIN, free_port, http_ok, process, wait_until
from tests.integration.test_serving import APPLICATION


def test_built_bento_serves_without_the_tracking_store(tmp_path: Path, loans_data: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    store = f"sqlite:///{store_dir / 'mlflow.db'}"
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
    }
    build = subprocess.run(
        ["make", "bento"], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert not (REPO / "bentos" / "bundle.json").exists()

    bentoml = str(VENV_BIN / "bentoml")
    models = json.loads(
        subprocess.run(
            [bentoml, "models", "list", "-o", "json"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    (model,) = models
    assert model["tag"].startswith("loans:1-")
    version = MlflowClient(store, store).get_model_version_by_alias("loans", "champion")
    bentos = json.loads(
        subprocess.run(
            [bentoml, "list", "-o", "json"], env=env, check=True, capture_output=True, text=True
        ).stdout
    )
    (bento,) = bentos
    info = subprocess.run(
        [bentoml, "models", "get", model["tag"], "-o", "json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    labels = json.loads(info)["labels"]
    assert labels["pipeline"] == "loans"
    assert labels["version"] == "1"
    assert labels["run_id"] == version.run_id
    assert len(labels["data_sha256"]) == 64

    shutil.rmtree(store_dir)  # no tracking store from here on
    port, data_port = free_port(), free_port()
    serve_env = {
        "BENTOML_HOME": env["BENTOML_HOME"],
        "GATEWAY_TRACKING_URI": store,
        "GATEWAY_DATA_PORT": str(data_port),
        "GATEWAY_GRPC_PORT": str(free_port()),
        "GATEWAY_POLL_INTERVAL_S": "0",
    }
    args = [bentoml, "serve", bento["tag"], "--port", str(port), "--host", "127.0.0.1"]
    with process(args, cwd=tmp_path, env=serve_env, log=tmp_path / "bento.log") as proc:
        wait_until(http_ok(f"http://127.0.0.1:{port}/readyz"), 120, "bentoml serve <bento>", proc)
        for base in (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{data_port}"):
            r = httpx.post(f"{base}/predict", json={"application": APPLICATION}, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == "1"
            assert r.json()["run_id"] == version.run_id
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{serve_env['GATEWAY_GRPC_PORT']}")
        assert grpc.is_model_ready("loans")
        grpc.close()
    log = (tmp_path / "bento.log").read_text()
    assert "serving the bundled loans:1-" in log
    # gRPC is carried by the gateway-grpc that the bento brought, not the environment's
    (front,) = re.findall(r"listening on \S+ \((\S+), pid \d+\)", log)
    assert front.startswith(f"{env['BENTOML_HOME']}/bentos/lineage-gateway/"), front
    assert front.endswith("/src/gateway/oip/gateway-grpc"), front
    assert not (REPO / "gateway" / "oip" / "gateway-grpc").exists()
