from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.helpers import cli, forget_mlflow_globals
from tests.services import PSYCOPG, Postgres, mlflow_server, postgres
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
MLFLOW_TEMPLATE = "mlflow_template"


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


@pytest.fixture(autouse=True)
def no_mlflow_globals() -> None:
    """MLflow's set_tracking_uri / set_registry_uri export the URIs to the environment, where
    the next test's settings would read them as the user's: each test starts without them."""
    forget_mlflow_globals()


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


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, loans_data: Path) -> str:
    """A store with one loans champion (module-scoped: the servers only read it)."""
    root = tmp_path_factory.mktemp("loans-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    train_ok(uri, "loans", "--data", str(loans_data), *FAST_LOANS)
    return uri


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg() -> Iterator[Postgres]:
    """One throwaway PostgreSQL cluster for the session (each test makes its own databases)."""
    with postgres() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def mlflow_template(pg: Postgres, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database that MLflow's server has migrated once: each test's database is a copy."""
    pg.create_database(MLFLOW_TEMPLATE)
    logs = tmp_path_factory.mktemp("mlflow-template")
    with mlflow_server(pg.url(MLFLOW_TEMPLATE, PSYCOPG), logs / "artifacts", logs):
        pass
    return MLFLOW_TEMPLATE


@dataclass(frozen=True)
class Tracking:
    """Where a test's runs and models go: the URI, and the folder artifacts are stored in."""

    kind: str
    uri: str
    artifacts: Path

    def local_path(self, artifact_uri: str) -> Path:
        """The file behind an artifact URI of this store (what a tampering test edits)."""
        if self.kind == "sqlite":
            return Path(urlparse(artifact_uri).path)
        return self.artifacts / artifact_uri.removeprefix("mlflow-artifacts:/").lstrip("/")


@pytest.fixture(params=["sqlite", "server"])
def tracking(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Tracking]:
    """A fresh tracking store of each kind: the embedded sqlite default, and ``mlflow server``
    on PostgreSQL with proxied artifacts."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if request.param == "sqlite":
        yield Tracking("sqlite", f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlartifacts")
        return
    pg: Postgres = request.getfixturevalue("pg")
    template = request.getfixturevalue("mlflow_template")
    database = f"mlflow_{uuid.uuid4().hex[:12]}"
    pg.create_database(database, template=template)
    artifacts = tmp_path / "server-artifacts"
    with mlflow_server(pg.url(database, PSYCOPG), artifacts, tmp_path) as url:
        yield Tracking("server", url, artifacts)
