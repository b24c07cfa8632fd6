"""Bundle a registered version into the BentoML model store, so that a built bento serves it — and
watches its drift — with no tracking store in reach.

``python -m gateway.bundle`` imports the champion (verified) as a BentoML model labelled with
pipeline, version, run id and data sha256, with the drift reference sample its run logged, and
writes its tag to ``bentos/bundle.json``, where the Bento service declares it as a
``BentoModel``: that is what makes ``bentoml build`` copy it in. The service and the loop
controller both fall back to it (:func:`load_or_bundled`). MLflow is imported only where a model
is read: the service imports this module when BentoML imports the service.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import bentoml

from gateway.errors import ModelUnavailable
from gateway.model import LoadedModel
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
SOURCE = Path(__file__).parents[1]  # the source root: the repository, or a bento's src/
BUNDLE = SOURCE / "bentos" / "bundle.json"  # written by `make bento`, read by the build
MANIFEST = "lineage_gateway.json"
MODEL_DIR = "mlflow_model"
REFERENCE = "drift_reference.parquet"
DATA_SHA256_TAG = "lineage.data.sha256"


def bundle(settings: GatewaySettings) -> tuple[str, str]:
    """Import the version ``settings.alias`` points at; return its BentoML tag and the digest
    of its recorded sha256 values (kept in ``bundle.json``, apart from the model)."""
    from gateway.loader import fetch, verify  # MLflow: only where a model is read
    from trainers.drift import REFERENCE_SAMPLE
    from trainers.lineage import manifest_sha256

    with tempfile.TemporaryDirectory(prefix="gateway-bundle-") as tmp:
        fetched = fetch(settings, None, Path(tmp))
        verify(fetched.model_dir, fetched.recorded, f"{fetched.name} v{fetched.version}")
        tag = f"{fetched.name}:{fetched.version}-{fetched.run_id[:12]}"
        digest = manifest_sha256(fetched.recorded)
        try:
            return str(bentoml.models.get(tag).tag), digest
        except bentoml.exceptions.NotFound:
            pass
        client = settings.mlflow()
        data_sha256 = client.get_run(fetched.run_id).data.tags.get(DATA_SHA256_TAG, "")
        labels = {
            "pipeline": fetched.name,
            "version": fetched.version,
            "run_id": fetched.run_id,
            "data_sha256": data_sha256,
        }
        reference = client.download_artifacts(fetched.run_id, REFERENCE_SAMPLE, tmp)
        with bentoml.models.create(tag, labels=labels) as model:
            shutil.copytree(fetched.model_dir, model.path_of(MODEL_DIR))
            shutil.copy(reference, model.path_of(REFERENCE))
            manifest = {**labels, "sha256": fetched.recorded}
            Path(model.path_of(MANIFEST)).write_text(json.dumps(manifest, indent=1))
        return str(model.tag), digest


def bundled(pipeline: str | None = None) -> dict[str, str]:
    """What ``bentos/bundle.json`` names (``model``, ``pipeline``), if this source has one and
    it is of ``pipeline`` (any, when None)."""
    found = dict(json.loads(BUNDLE.read_text())) if BUNDLE.exists() else {}
    return found if pipeline in (None, found.get("pipeline")) else {}


def _path(tag: str) -> Path:
    """The bundled model's directory: in a container, beside the bento's ``src/``; else in the
    BentoML model store."""
    name, version = tag.split(":")
    inside = SOURCE.parent / "models" / name / version  # a bento: models/ beside src/
    if SOURCE.name == "src" and inside.is_dir():
        return inside
    return Path(bentoml.models.get(tag).path)


def load_bundled(tag: str, digest: str | None) -> LoadedModel:
    """The bundled model ``tag``, verified (against ``digest``, from ``bundle.json``, and its
    recorded sha256 values) and warmed up, with its drift reference."""
    from gateway.loader import Fetched, check_record, load_local

    path = _path(tag)
    manifest = json.loads((path / MANIFEST).read_text())
    fetched = Fetched(
        name=manifest["pipeline"],
        version=manifest["version"],
        run_id=manifest["run_id"],
        model_dir=path / MODEL_DIR,
        recorded=manifest["sha256"],
    )
    check_record(fetched, digest)
    model = load_local(fetched)
    reference = path / REFERENCE
    return dataclasses.replace(model, reference=reference) if reference.exists() else model


def load_or_bundled(
    settings: GatewaySettings, load: Callable[[GatewaySettings], LoadedModel]
) -> LoadedModel:
    """``load(settings)``, or — when the registry is out of reach — the version bundled into
    this bento for the same pipeline."""
    try:
        return load(settings)
    except ModelUnavailable as exc:
        found = bundled(settings.pipeline)
        tag = found.get("model")
        if tag is None:
            raise
        log.warning("registry unavailable (%s); serving the bundled %s", exc, tag)
        return load_bundled(tag, found.get("manifest_sha256"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BUNDLE, help="where to write the bundle tag")
    args = parser.parse_args()
    settings = GatewaySettings()
    tag, digest = bundle(settings)
    found = {"model": tag, "pipeline": settings.pipeline, "manifest_sha256": digest}
    args.out.write_text(json.dumps(found) + "\n")
    print(f"bundled {tag} → {args.out}")


if __name__ == "__main__":
    main()
