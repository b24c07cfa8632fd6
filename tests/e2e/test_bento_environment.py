"""The bento as its image would run it: `make bento` builds it with the champion inside, a clean
virtualenv gets only *the bento's own* requirements (what its Dockerfile installs), and from it
`bentoml serve <bento>` and the loop controller run with no tracking store at all.

No container engine runs here, so the image is checked through what it is built from: the
generated Dockerfile (its ports, state volume and install step) and ``env/python``. The one
liberty taken: the bento's install step names PyTorch's CPU index, which this machine cannot
reach; its own package mirror serves the same CPU torch, so the index is left out of the install.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as grpcclient
from mlflow import MlflowClient

from tests.conftest import FAST_LOANS, train_ok
from tests.helpers import (
    REPO,
    VENV_BIN,
    clean_venv,
    free_port,
    http_ok,
    metric_samples,
    process,
    wait_until,
)
from tests.traffic import columns, objects

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
STATE_DIR = "/var/lib/lineage-gateway"


def _bentoml_json(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run(
        [str(VENV_BIN / "bentoml"), *args, "-o", "json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout)


def _install_args(install_sh: str) -> list[str]:
    """The pip arguments of the bento's install step, as its Dockerfile runs it."""
    (line,) = re.findall(r"^PIP_ARGS=\((.*)\)$", install_sh, re.M)
    return shlex.split(line)


def test_the_dockerfile_exposes_every_port_and_installs_the_bento_requirements(
    built: tuple[Path, str, str],
) -> None:
    bento, _, _ = built
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    exposed = {
        int(p) for line in re.findall(r"^EXPOSE (.+)$", dockerfile, re.M) for p in line.split()
    }
    assert {3000, 3001, 3002, 3100} <= exposed
    assert f"VOLUME {STATE_DIR}" in dockerfile
    assert f"ARG GATEWAY_STATE_DIR={STATE_DIR}" in dockerfile
    assert "RUN bash -euxo pipefail /home/bentoml/bento/env/python/install.sh" in dockerfile
    assert dockerfile.rstrip().splitlines()[-1].startswith("ENTRYPOINT")

    install = (bento / "env" / "python" / "install.sh").read_text()
    assert _install_args(install) == ["--extra-index-url", CPU_INDEX]  # CPU torch by default
    assert '-r "$REQUIREMENTS_TXT"' in install
    required = (bento / "env" / "python" / "requirements.txt").read_text().split()
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(declared) <= set(required)  # one list: the project's dependencies
    for runtime in ("evidently==0.7.23", "uvloop>=0.19", "httptools>=0.6", "fastapi>=0.115"):
        assert runtime in required


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, loans_data: Path) -> tuple[Path, str, str]:
    """``make bento`` on a fresh store: the bento's directory, the tracking URI it came from
    (removed once built) and the champion's run id."""
    root = tmp_path_factory.mktemp("bento-build")
    store = f"sqlite:///{root / 'store' / 'mlflow.db'}"
    (root / "store").mkdir()
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    version = MlflowClient(store, store).get_model_version_by_alias("loans", "champion")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store,
        "BENTOML_HOME": str(root / "bentoml"),
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
    }
    done = subprocess.run(
        ["make", "bento"], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (REPO / "bentos" / "bundle.json").exists()
    assert not (REPO / "gateway" / "oip" / "gateway-grpc").exists()

    (model,) = _bentoml_json(env, "models", "list")
    labels = _bentoml_json(env, "models", "get", model["tag"])["labels"]
    assert (labels["pipeline"], labels["version"]) == ("loans", "1")
    assert labels["run_id"] == version.run_id
    assert len(labels["data_sha256"]) == 64
    (bento,) = _bentoml_json(env, "list")
    name, tag = bento["tag"].split(":")
    shutil.rmtree(root / "store")  # no tracking store from here on
    return root / "bentoml" / "bentos" / name / tag, store, str(version.run_id)


@pytest.mark.e2e
def test_the_bento_serves_and_watches_drift_from_its_own_requirements(
    built: tuple[Path, str, str], tmp_path: Path
) -> None:
    bento, gone, run_id = built
    install = (bento / "env" / "python" / "install.sh").read_text()
    reachable = [a for a in _install_args(install) if a not in {"--extra-index-url", CPU_INDEX}]
    venv = clean_venv(
        tmp_path / "venv",
        bento / "env" / "python" / "requirements.txt",
        reachable,
        log=tmp_path / "pip.log",
    )
    assert not list((venv.parent / "lib").glob("python*/site-packages/gateway"))

    ports = {"http": free_port(), "data": free_port(), "grpc": free_port(), "loop": free_port()}
    env = {
        "PATH": f"{venv}:/usr/bin:/bin",  # the bento's environment only
        "HOME": str(tmp_path),
        "BENTOML_HOME": str(bento.parents[2]),
        "BENTOML_DO_NOT_TRACK": "true",
        "GATEWAY_TRACKING_URI": gone,  # the store it was built from, deleted
        "GATEWAY_STATE_DIR": str(tmp_path / "state"),  # the image's volume
        "GATEWAY_DATA_PORT": str(ports["data"]),
        "GATEWAY_GRPC_PORT": str(ports["grpc"]),
        "GATEWAY_CONTROLLER_PORT": str(ports["loop"]),
        "GATEWAY_CONTROLLER_HOST": "127.0.0.1",
        "GATEWAY_DRIFT_WINDOW": "40",
        "GATEWAY_DRIFT_INTERVAL_S": "0.5",
        "GATEWAY_RETRAIN_ON_ALERT": "false",
    }
    serve = [str(venv / "bentoml"), "serve", str(bento), "--port", str(ports["http"])]
    controller = [str(venv / "python"), "-m", "gateway.controller"]
    base, data = f"http://127.0.0.1:{ports['http']}", f"http://127.0.0.1:{ports['data']}"
    loop = f"http://127.0.0.1:{ports['loop']}"
    with (
        process(
            serve, cwd=tmp_path, env=env, log=tmp_path / "bento.log", inherit_path=False
        ) as proc,
        process(
            controller,
            cwd=bento / "src",
            env=env,
            log=tmp_path / "controller.log",
            inherit_path=False,
        ) as looping,
    ):
        wait_until(http_ok(f"{data}/ready"), 180, "bentoml serve <bento>", proc)
        wait_until(http_ok(f"{loop}/ready"), 120, "the controller", looping)

        sent, _ = objects(60, shift=0.0, seed=5)
        answers = []
        for i, application in enumerate(sent):  # BentoML's port and the data plane, in turn
            answer = httpx.post(
                f"{base if i % 2 else data}/predict", json={"application": application}
            )
            assert answer.status_code == 200, answer.text
            assert (answer.json()["model_version"], answer.json()["run_id"]) == ("1", run_id)
            answers.append(answer.json()["prediction"])

        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc']}")
        assert grpc.is_model_ready("loans")
        meta = grpc.get_model_metadata("loans", as_json=True)
        inputs = []
        for name, datatype, array in columns(meta["inputs"], sent[:8]):
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        decisions = grpc.infer("loans", inputs).as_numpy("decision")
        grpc.close()
        assert [d.decode() for d in decisions.ravel()] == [a["decision"] for a in answers[:8]]

        wait_until(http_ok(f"{loop}/drift"), 60, "a drift window", looping)
        window = httpx.get(f"{loop}/drift").json()
        assert window["model_version"] == "1"
        assert window["columns"], window
        text = httpx.get(f"{loop}/metrics").text
        assert sum(metric_samples(text, "gateway_drift_windows_total").values()) >= 1
        errors = metric_samples(text, "gateway_monitor_errors_total")
        assert errors['{stage="drift"}'] == errors['{stage="report"}'] == 0  # evidently works

        served = httpx.get(f"{base}/metrics").text
        assert sum(metric_samples(served, "gateway_requests_total").values()) >= 30

    log = (tmp_path / "bento.log").read_text()
    assert "serving the bundled loans:1-" in log
    (front,) = re.findall(r"listening on \S+ \((\S+), pid \d+\)", log)
    assert front == str(bento / "src" / "gateway" / "oip" / "gateway-grpc")
