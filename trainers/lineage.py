"""What a run records about where it came from, and how to read it back as a chain."""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from trainers import registry
from trainers.contract import Pipeline
from trainers.errors import RegistryError

# Tag names: one place, so the CLI, the gateway and the tests read the same keys.
PIPELINE = "lineage.pipeline"
SEED = "lineage.seed"
DATA_SOURCE = "lineage.data.source"
DATA_SHA256 = "lineage.data.sha256"
DATA_ROWS = "lineage.data.rows"
GIT_SHA = "lineage.code.git_sha"
GIT_DIRTY = "lineage.code.dirty"
GIT_REPO = "lineage.code.repo"
PIPELINE_SHA256 = "lineage.code.pipeline_sha256"
PYTHON = "lineage.env.python"
PARENT_RUN = "lineage.parent_run_id"
TRIGGER = "lineage.trigger"
WEIGHTS_SHA256 = "lineage.weights.sha256"
MANIFEST_SHA256 = "lineage.artifacts.manifest_sha256"
MODEL_URI = "lineage.model_uri"

ENVIRONMENT_ARTIFACT = "lineage/environment.json"
ARTIFACT_HASHES = "lineage/artifact_sha256.json"
KEY_PACKAGES = ("torch", "mlflow", "pandas", "numpy", "pydantic", "safetensors", "lineage-gateway")


def _git(directory: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), *args], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_info(directory: Path) -> dict[str, str]:
    """Git commit and dirty flag of the repository holding ``directory`` (tracked files only)."""
    sha = _git(directory, "rev-parse", "HEAD")
    if sha is None:
        return {GIT_SHA: "unknown", GIT_DIRTY: "unknown", GIT_REPO: str(directory)}
    status = _git(directory, "status", "--porcelain", "--untracked-files=no") or ""
    top = _git(directory, "rev-parse", "--show-toplevel") or str(directory)
    return {GIT_SHA: sha, GIT_DIRTY: str(bool(status)).lower(), GIT_REPO: top}


def pipeline_source_sha256(pipeline: Pipeline[Any, Any, Any]) -> str:
    """sha256 over the source files of the pipeline's package (name + content, sorted)."""
    package = Path(inspect.getfile(type(pipeline))).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def environment() -> dict[str, Any]:
    """Python, platform and every installed distribution with its version."""
    packages = {
        d.metadata["Name"].lower(): d.version
        for d in importlib.metadata.distributions()
        if d.metadata["Name"]
    }
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "key_packages": {name: packages.get(name, "not installed") for name in KEY_PACKAGES},
        "packages": dict(sorted(packages.items())),
    }


def sha256_tree(directory: Path) -> dict[str, str]:
    """``relative path → sha256`` for every file under ``directory``, bytecode caches left out:
    Python writes them beside a model's code whenever it is imported, from the code hashed."""
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and "__pycache__" not in p.relative_to(directory).parts
    }


def manifest_sha256(hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


# -- reading lineage back -------------------------------------------------------------------


@dataclass
class RunLineage:
    """One run's lineage, read from the tracking store."""

    run_id: str
    status: str
    start_time: int
    pipeline: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    versions: list[dict[str, Any]] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    artifact_sha256: dict[str, str] = field(default_factory=dict)
    parent: RunLineage | None = None

    def to_dict(self) -> dict[str, Any]:
        tags = self.tags
        return {
            "run_id": self.run_id,
            "status": self.status,
            "start_time": self.start_time,
            "pipeline": self.pipeline,
            "versions": self.versions,
            "params": self.params,
            "metrics": self.metrics,
            "seed": tags.get(SEED),
            "data": {
                "source": tags.get(DATA_SOURCE),
                "sha256": tags.get(DATA_SHA256),
                "rows": int(tags[DATA_ROWS]) if DATA_ROWS in tags else None,
            },
            "code": {
                "git_sha": tags.get(GIT_SHA),
                "dirty": tags.get(GIT_DIRTY),
                "repo": tags.get(GIT_REPO),
                "pipeline_sha256": tags.get(PIPELINE_SHA256),
            },
            "environment": {
                "python": self.environment.get("python", tags.get(PYTHON)),
                "platform": self.environment.get("platform"),
                "packages": self.environment.get("key_packages", {}),
            },
            "artifacts": {
                "model_uri": tags.get(MODEL_URI),
                "weights_sha256": tags.get(WEIGHTS_SHA256),
                "manifest_sha256": tags.get(MANIFEST_SHA256),
                "sha256": self.artifact_sha256,
            },
            "gate": {k.removeprefix("gate."): v for k, v in tags.items() if k.startswith("gate.")},
            "trigger": tags.get(TRIGGER),
            "parent_run_id": tags.get(PARENT_RUN),
            "parent": self.parent.to_dict() if self.parent else None,
        }


def _load_json(client: MlflowClient, run_id: str, path: str) -> Any:
    try:
        local = client.download_artifacts(run_id, path)
    except (MlflowException, OSError):
        return {}
    return json.loads(Path(local).read_text())


def read_run(client: MlflowClient, run_id: str, *, depth: int = 32) -> RunLineage:
    """The lineage of ``run_id`` and, through ``lineage.parent_run_id``, of its ancestors."""
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise RegistryError(f"no run {run_id!r} in the tracking store") from exc
    tags = dict(run.data.tags)
    pipeline = tags.get(PIPELINE, "")
    versions = []
    if pipeline:
        aliases = registry.aliases_by_version(client, pipeline)
        for mv in client.search_model_versions(f"name = '{pipeline}' and run_id = '{run_id}'"):
            version = str(mv.version)
            versions.append(
                {"name": mv.name, "version": version, "aliases": aliases.get(version, [])}
            )
    lineage = RunLineage(
        run_id=run_id,
        status=run.info.status,
        start_time=run.info.start_time,
        pipeline=pipeline,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=tags,
        versions=versions,
        environment=_load_json(client, run_id, ENVIRONMENT_ARTIFACT),
        artifact_sha256=_load_json(client, run_id, ARTIFACT_HASHES),
    )
    parent = tags.get(PARENT_RUN)
    if parent and depth > 0:
        lineage.parent = read_run(client, parent, depth=depth - 1)
    return lineage
