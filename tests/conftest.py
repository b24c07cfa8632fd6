from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import cli
from trainers import pipelines
from trainers.snapshots import write_snapshot

TINY_REVIEWS = [
    "--param",
    "d_model=16",
    "--param",
    "n_heads=2",
    "--param",
    "n_layers=1",
    "--param",
    "d_ff=32",
    "--param",
    "epochs=2",
]
FAST_LOANS = ["--param", "epochs=4"]


def make_snapshot(directory: Path, name: str, rows: int, shift: float = 0.0, seed: int = 0) -> Path:
    path = directory / f"{name}-{rows}-{shift}-{seed}.parquet"
    if not path.exists():
        frame = pipelines.get(name).generate(rows, shift, seed)
        write_snapshot(frame, path, {"pipeline": name, "rows": rows, "shift": shift, "seed": seed})
    return path


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite tracking store; the working directory is the test's temp dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("snapshots")


@pytest.fixture(scope="session")
def loans_data(snapshots: Path) -> Path:
    return make_snapshot(snapshots, "loans", 3000)


@pytest.fixture(scope="session")
def reviews_data(snapshots: Path) -> Path:
    return make_snapshot(snapshots, "reviews", 600)


def train_ok(uri: str, *args: str) -> str:
    result = cli(uri, "train", *args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
