"""Small real stand-ins for what lies outside the loop's units: a retrain process the test
controls, drift computations for the low-priority process, a tracking store and what a retrain
leaves in it.

This file is also the stand-in retrain itself, started as a script (``python tests/loopkit.py
CONTROL retrain --from-run … --trigger T``): it imports only the standard library at load time,
so it starts in milliseconds; what the tests need besides is imported where it is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from trainers.drift import DriftOptions, DriftResult

TRIGGER_TAG = "lineage.trigger"  # what `trainers retrain --trigger` tags its run with
STAND_IN_TIMEOUT_S = 120.0  # a stand-in nobody releases exits by itself


# -- the stand-in retrain ----------------------------------------------------------------------
def retrain_command(control: Path) -> list[str]:
    """The command a loop starts instead of ``python -m trainers``: the stand-in below, which
    reports under ``control`` and exits when the test says so."""
    return [sys.executable, str(Path(__file__).resolve()), str(control)]


def main(argv: list[str]) -> int:
    """Record how it was started in ``CONTROL/<trigger>.json``, write a few log lines, then wait
    for ``CONTROL/<trigger>.exit`` and exit with the status written there."""
    control, args = Path(argv[0]), argv[1:]
    trigger = args[args.index("--trigger") + 1]
    started = {
        "args": args,
        "pid": os.getpid(),
        "env": {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")},
    }
    _write_atomically(control / f"{trigger}.json", json.dumps(started))
    print(f"stand-in retrain {trigger}: epoch 1/2", flush=True)
    print(f"stand-in retrain {trigger}: epoch 2/2", flush=True)
    release = control / f"{trigger}.exit"
    deadline = time.monotonic() + STAND_IN_TIMEOUT_S
    while not release.exists():
        if time.monotonic() > deadline:
            return 99
        time.sleep(0.01)
    return int(release.read_text())


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    partial.replace(path)


def release(control: Path, trigger: str, status: int) -> None:
    """Let the stand-in retrain ``trigger`` exit with ``status``."""
    _write_atomically(control / f"{trigger}.exit", str(status))


async def started(control: Path, trigger: str, timeout: float = 20.0) -> dict[str, Any]:
    """How the stand-in retrain ``trigger`` was started, once it has started."""
    path = control / f"{trigger}.json"
    await eventually(path.exists, timeout, f"the stand-in retrain {trigger} to start")
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def stand_ins(control: Path) -> list[str]:
    """The triggers of every stand-in retrain started under ``control`` (that got as far as
    reporting it)."""
    return sorted(p.stem for p in control.glob("*.json"))


def end_stand_ins(control: Path) -> None:
    """Kill the stand-in retrains of ``control`` still running, reported or not (by their
    command line, which names ``control``)."""
    me = str(Path(__file__).resolve())
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if [a.decode(errors="replace") for a in args[1:3]] == [me, str(control)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def eventually(check: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll ``check`` on the event loop until it is true."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f} s")
        await asyncio.sleep(0.01)


# -- the drift computation, in the low-priority process -----------------------------------------
def hang(*args: Any) -> Any:
    """A drift computation that never answers (the test kills the process running it)."""
    time.sleep(STAND_IN_TIMEOUT_S)


def quiet(reference: Any, current: Any, options: DriftOptions, html: Path | None) -> DriftResult:
    """A verdict of no drift without Evidently: a new low-priority process answers it at once."""
    from trainers.drift import DriftResult  # pandas only; never at load time (see above)

    return DriftResult((), 0.0, False, len(current), len(reference))


def sketch(reference: Any, current: Any, options: DriftOptions, html: Path) -> Path:
    """An HTML report without Evidently."""
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(f"<html>{len(current)} rows</html>")
    return html


# -- the tracking store, and what a retrain leaves in it ---------------------------------------
def tracking_store(root: Path, name: str) -> MlflowClient:
    """A new sqlite tracking and registry store under ``root`` with the experiment and the
    registered model ``name``, as ``trainers train`` leaves them (a few seconds: its schema)."""
    from mlflow import MlflowClient

    from tests.helpers import forget_mlflow_globals  # here: the stand-in retrain runs this file
    from trainers.tracking import ensure_experiment

    forget_mlflow_globals()  # a URI an earlier test set for this process is not this store's
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    ensure_experiment(client, name)
    client.create_registered_model(name)
    return client


def retrain_run(client: MlflowClient, name: str, trigger: str | None, **tags: str) -> str:
    """A run in ``name``'s experiment, tagged with the alert ``trigger`` as a retrain tags its
    own; left RUNNING, as a retrain leaves it until it ends."""
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    run_tags = {**tags, **({TRIGGER_TAG: trigger} if trigger else {})}
    return str(client.create_run(experiment.experiment_id, tags=run_tags).info.run_id)


def gated(client: MlflowClient, name: str, run_id: str, decision: str) -> str:
    """What a retrain's run ends with: a registered version, the gate's decision on the run
    and the version, the champion alias moved when promoted. Returns the version."""
    run = client.get_run(run_id)
    version = str(
        client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id).version
    )
    client.set_tag(run_id, "gate.decision", decision)
    client.set_model_version_tag(name, version, "gate.decision", decision)
    if decision == "promoted":
        client.set_registered_model_alias(name, "champion", version)
    client.set_terminated(run_id, "FINISHED")
    return version


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
