"""The README's promise: on a fresh clone, `make serve` trains and serves, the documented `curl`
request gets an answer, and the loop controller runs beside the service.

The clone runs `make serve` with this checkout's virtualenv (`VENV=...`, its install stamp taken
as current) instead of installing a second one: the install recipe is the one `make test` itself
just ran on a clean clone in CI, and a second install of torch and friends would cost this test
three minutes. Everything else — no `mlflow.db`, training the demo pipeline, `bentoml serve` from
the clone's files — starts from nothing."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers import MLFLOW_GLOBALS, REPO, VENV_BIN, free_port, http_ok, process, wait_until


def documented_request() -> tuple[int, str, dict[str, object]]:
    """The port, path and JSON body of the README's `curl` example."""
    readme = (REPO / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("curl "))
    words = shlex.split(line)
    url = next(w for w in words if w.startswith("localhost:"))
    body = json.loads(words[words.index("-d") + 1])
    port, path = re.fullmatch(r"localhost:(\d+)(/.*)", url).groups()  # type: ignore[union-attr]
    return int(port), path, body


@pytest.mark.e2e
def test_make_serve_on_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", *MLFLOW_GLOBALS}}
    env["GATEWAY_DATA_PORT"] = data = str(free_port())
    env["GATEWAY_GRPC_PORT"] = str(free_port())
    env["GATEWAY_CONTROLLER_PORT"] = controller = str(free_port())
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO))
    )
    log = tmp_path / "make-serve.log"
    venv = VENV_BIN.parent
    command = ["make", "-o", f"{venv}/.installed", "serve", f"PORT={port}", f"VENV={venv}"]
    with process(command, cwd=clone, env=env, log=log, inherit_path=False) as proc:
        wait_until(http_ok(f"http://127.0.0.1:{port}/readyz"), 900, "make serve", proc)
        documented, path, body = documented_request()
        served = {3000: port, 3001: int(data)}[documented]  # the README's ports, here
        wait_until(http_ok(f"http://127.0.0.1:{data}/ready"), 60, "the data plane", proc)
        response = httpx.post(f"http://127.0.0.1:{served}{path}", json=body, timeout=30)
        wait_until(http_ok(f"http://127.0.0.1:{controller}/ready"), 120, "the controller", proc)
        loop = httpx.get(f"http://127.0.0.1:{controller}/ready", timeout=10).json()
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == "loans"
    assert answer["model_version"] == "1"
    assert answer["prediction"]["decision"] in {"approve", "review", "decline"}
    assert 0.0 <= answer["prediction"]["default_probability"] <= 1.0
    assert (clone / "mlflow.db").exists()
    assert "loans v1" in log.read_text()  # trained by make serve, not found
    assert loop["active"] is True  # the only controller holds the lease
    assert loop["model_version"] == "1"
