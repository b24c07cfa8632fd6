"""Load a registered pipeline through MLflow — verified and warmed up — and expose the one
interface serving calls."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from gateway.batching import check_outputs
from gateway.errors import ModelUnavailable
from gateway.model import LoadedModel
from gateway.settings import GatewaySettings
from trainers.lineage import MANIFEST_SHA256, manifest_sha256, sha256_tree
from trainers.sqlstore import redact

ARTIFACT_HASHES = "lineage/artifact_sha256.json"
# MLflow writes this into a model's directory when the model is read through the registry; it is
# registry bookkeeping, not part of what training logged, so it is not in the recorded hashes.
REGISTRY_BOOKKEEPING = frozenset({"registered_model_meta"})


class IntegrityError(ModelUnavailable):
    """A model's files do not match the sha256 values its run recorded."""


def verify(directory: Path, recorded: dict[str, str], what: str) -> None:
    """Refuse ``directory`` unless its files are exactly those recorded, byte for byte."""
    actual = {k: v for k, v in sha256_tree(directory).items() if k not in REGISTRY_BOOKKEEPING}
    changed = sorted(p for p in recorded if actual.get(p) != recorded[p])
    extra = sorted(set(actual) - set(recorded))
    if not recorded or changed or extra:
        raise IntegrityError(
            f"{what}: artifacts do not match the sha256 recorded in its run "
            f"(changed or missing: {changed or 'none'}; unexpected: {extra or 'none'})"
        )


@dataclass(frozen=True)
class Fetched:
    """A registered version's files on local disk, with what identifies them."""

    name: str
    version: str
    run_id: str
    model_dir: Path
    recorded: dict[str, str]


def fetch(settings: GatewaySettings, version: str | None, into: Path) -> Fetched:
    """Download ``version`` (default: the alias's) and its recorded sha256 values into ``into``."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = settings.mlflow()
    name = settings.pipeline
    try:
        mv = (
            client.get_model_version(name, version)
            if version is not None
            else client.get_model_version_by_alias(name, settings.alias)
        )
        source = client.get_model_version_download_uri(name, mv.version)
        hashes = client.download_artifacts(str(mv.run_id), ARTIFACT_HASHES, str(into))
        recorded = json.loads(Path(hashes).read_text())
        digest = client.get_run(str(mv.run_id)).data.tags.get(MANIFEST_SHA256)
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source,
                dst_path=str(into),
                tracking_uri=settings.tracking_uri,  # not MLflow's process-wide default
                registry_uri=settings.registry_uri,
            )
        )
    except MlflowException as exc:
        what = f"{name} v{version}" if version else settings.model_uri
        raise ModelUnavailable(
            f"cannot load {what} from {redact(settings.tracking_uri)}: {exc.message}"
        ) from exc
    fetched = Fetched(name, str(mv.version), str(mv.run_id), local, recorded)
    check_record(fetched, digest)
    return fetched


def check_record(fetched: Fetched, digest: str | None) -> None:
    """Refuse ``fetched`` unless its recorded sha256 values are those training recorded: their
    digest is also kept apart from them (the run's ``lineage.manifest_sha256`` tag, a bento's
    ``bundle.json``), so that editing the record to match edited files is caught too."""
    if digest is None or manifest_sha256(fetched.recorded) != digest:
        raise IntegrityError(
            f"{fetched.name} v{fetched.version}: its recorded sha256 values were edited (their "
            f"digest is not the {MANIFEST_SHA256} recorded at training: {digest or 'none'})"
        )


def load_local(fetched: Fetched) -> LoadedModel:
    """Verify ``fetched`` against its recorded sha256 values, load it on the serving device and
    warm it up."""
    verify(fetched.model_dir, fetched.recorded, f"{fetched.name} v{fetched.version}")
    # The files were just checked against their recorded hashes; MLflow's comparison of the
    # training environment's requirements with this one costs ~1.5 s and is skipped.
    model = _load_pyfunc(fetched.model_dir)
    inner = model.unwrap_python_model()
    pipeline = inner.pipeline
    # Warm-up: first-call allocations happen here, not on a request.
    examples = list(pipeline.inputs_from_frame(model.input_example))
    check_outputs(examples, inner.predictor.predict_batch(examples))
    return LoadedModel(
        name=fetched.name,
        version=fetched.version,
        run_id=fetched.run_id,
        input_key=pipeline.input_key,
        input_model=pipeline.Input,
        output_model=pipeline.Output,
        predictor=inner.predictor,
        pipeline=pipeline,
    )


def _load_pyfunc(model_dir: Path) -> Any:
    """The pyfunc model in ``model_dir``. The model carries its own copy of ``trainers``, which
    MLflow puts first on ``sys.path``; the gateway already runs the installed one, and the copy
    sits in a directory deleted after loading, so the path is put back as it was."""
    path = list(sys.path)
    try:
        return mlflow.pyfunc.load_model(str(model_dir), suppress_warnings=True)
    finally:
        sys.path[:] = path


def load(settings: GatewaySettings, version: str | None = None) -> LoadedModel:
    """``version`` (default: the one ``settings.alias`` points at) from the registry, verified,
    loaded on the serving device and warmed up."""
    with tempfile.TemporaryDirectory(prefix="gateway-model-") as tmp:
        return load_local(fetch(settings, version, Path(tmp)))
