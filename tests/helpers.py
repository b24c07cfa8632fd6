"""Test helpers: free ports, readiness polling, the CLI in-process, process groups."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner, Result

from gateway.settings import GatewaySettings
from trainers.cli import main

REPO = Path(__file__).resolve().parents[1]
MLFLOW_GLOBALS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll ``check`` until it is true; fail early if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError, OSError):
            if check():
                return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not ready after {timeout:.0f} s")


def http_ok(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=2).status_code == 200


@contextlib.contextmanager
def process(
    args: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log: Path,
    inherit_path: bool = True,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` in its own process group; stop the whole group on exit.

    With ``inherit_path`` the test virtualenv's ``bin`` leads ``PATH`` (servers spawn ``uvicorn``
    and friends by name); otherwise ``env`` is the whole environment.
    """
    if inherit_path:
        # MLflow's set_tracking_uri / set_registry_uri (the in-process CLI calls them) export
        # these: a server must get its stores from its own settings, not from the test process.
        inherited = {k: v for k, v in os.environ.items() if k not in MLFLOW_GLOBALS}
        env = {**inherited, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", **env}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def forget_mlflow_globals() -> None:
    """Drop what MLflow's set_tracking_uri / set_registry_uri exported to this process's
    environment: a new process of a user's would not have them."""
    for name in MLFLOW_GLOBALS:
        os.environ.pop(name, None)


def cli(uri: str, *args: str) -> Result:
    """Run ``trainers`` in-process against the store at ``uri``, as a new process would."""
    forget_mlflow_globals()
    return CliRunner().invoke(main, ["--tracking-uri", uri, *args], catch_exceptions=False)


@contextlib.contextmanager
def serve_gateway(
    store: str,
    logs: Path,
    *,
    workers: int = 2,
    settings: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    prefix: Sequence[str] = (),
    name: str = "bentoml",
) -> Iterator[tuple[str, str]]:
    """A real ``bentoml serve`` of the repository's bentofile with ``workers`` workers and the
    gateway ``settings`` (names without the ``GATEWAY_`` prefix), bound to ``host`` and run under
    ``prefix`` (e.g. ``ip netns exec NS``); yields the base URLs of BentoML's port and of the data
    plane."""
    port, data_port = free_port(), free_port()
    env = {
        "GATEWAY_TRACKING_URI": store,
        "GATEWAY_DATA_PORT": str(data_port),
        "GATEWAY_GRPC_PORT": str(free_port()),  # settings may name one to connect to
        "BENTOML_HOME": str(logs / f"{name}-home"),
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_CONFIG_OPTIONS": f"services.lineage_gateway.workers={workers}",
        **{f"GATEWAY_{k.upper()}": v for k, v in (settings or {}).items()},
    }
    args = [*prefix, str(VENV_BIN / "bentoml"), "serve", "--port", str(port), "--host", host]
    with process(args, cwd=REPO, env=env, log=logs / f"{name}.log") as proc:
        base, data = f"http://{host}:{port}", f"http://{host}:{data_port}"
        wait_until(http_ok(f"{base}/readyz"), 120, "bentoml serve", proc)
        wait_until(http_ok(f"{data}/ready"), 30, "data plane", proc)
        yield base, data


@contextlib.contextmanager
def run_controller(
    store: str,
    logs: Path,
    *,
    settings: dict[str, str] | None = None,
    name: str = "controller",
    prefix: Sequence[str] = (),
    host: str = "127.0.0.1",
    active: bool = True,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real ``gateway-controller`` on the tracking store ``store`` with the gateway
    ``settings`` (names without the ``GATEWAY_`` prefix), run under ``prefix`` (e.g. ``ip netns
    exec NS``); yields its base URL and process once it has loaded the champion (and, with
    ``active``, holds the lease)."""
    port = free_port()
    env = {
        "GATEWAY_TRACKING_URI": store,
        "GATEWAY_CONTROLLER_PORT": str(port),
        "GATEWAY_CONTROLLER_HOST": host,
        **{f"GATEWAY_{k.upper()}": v for k, v in (settings or {}).items()},
    }
    args = [*prefix, str(VENV_BIN / "gateway-controller")]
    with process(args, cwd=REPO, env=env, log=logs / f"{name}.log") as proc:
        base = f"http://{host}:{port}"
        wait_until(http_ok(f"{base}/ready"), 120, name, proc)
        if active:
            wait_until(lambda: leading(base), 60, f"{name} to take the lease", proc)
        yield base, proc


def leading(controller: str) -> bool:
    """Whether the controller at ``controller`` holds the lease."""
    return bool(httpx.get(f"{controller}/ready", timeout=5).json()["active"])


def metric_samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` for every sample of ``name`` in a Prometheus exposition."""
    samples = {}
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            if key == name or key.startswith(name + "{"):
                samples[key.removeprefix(name)] = float(value)
    return samples


def in_process_settings(store: str, **overrides: Any) -> GatewaySettings:
    """Settings for a gateway answering inside the test process: no data plane or gRPC port of
    its own, and no polling of the registry alias."""
    return GatewaySettings(
        tracking_uri=store, data_port=0, grpc_port=0, poll_interval_s=0, **overrides
    )


def clean_venv(
    path: Path, requirements: Path, pip_args: Sequence[str] = (), log: Path | None = None
) -> Path:
    """A new virtualenv at ``path`` with only ``requirements`` installed (``pip install -r``,
    then ``pip_args``); returns its ``bin``. Nothing of this checkout is installed into it."""
    base = getattr(sys, "_base_executable", sys.executable)  # the interpreter behind .venv
    subprocess.run([base, "-m", "venv", str(path)], check=True)
    bin_dir = path / "bin"
    # --no-compile: the same packages, without writing bytecode for all of them up front
    args = [str(bin_dir / "pip"), "install", "--quiet", "--no-compile", "-r", str(requirements)]
    args += pip_args
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    return bin_dir
