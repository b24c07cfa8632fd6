"""Bundle a registered version into the BentoML model store, so that a built bento serves it with
no tracking store in reach.

``python -m gateway.bundle --out bentos/bundle.json`` imports the champion (verified) as a BentoML
model labelled with pipeline, version, run id and data sha256, and writes its tag where the Bento
service declares it as a ``BentoModel``: that is what makes ``bentoml build`` copy it in.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import bentoml

from gateway.loader import Fetched, fetch, load_local, verify
from gateway.model import LoadedModel
from gateway.settings import GatewaySettings

MANIFEST = "lineage_gateway.json"
MODEL_DIR = "mlflow_model"
DATA_SHA256_TAG = "lineage.data.sha256"


def bundle(settings: GatewaySettings) -> str:
    """Import the version ``settings.alias`` points at; return its BentoML tag."""
    with tempfile.TemporaryDirectory(prefix="gateway-bundle-") as tmp:
        fetched = fetch(settings, None, Path(tmp))
        verify(fetched.model_dir, fetched.recorded, f"{fetched.name} v{fetched.version}")
        tag = f"{fetched.name}:{fetched.version}-{fetched.run_id[:12]}"
        try:
            return str(bentoml.models.get(tag).tag)
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
        with bentoml.models.create(tag, labels=labels) as model:
            shutil.copytree(fetched.model_dir, model.path_of(MODEL_DIR))
            manifest = {**labels, "sha256": fetched.recorded}
            Path(model.path_of(MANIFEST)).write_text(json.dumps(manifest, indent=1))
        return str(model.tag)


def load_bundled(tag: str) -> LoadedModel:
    """The bundled model ``tag`` from the BentoML model store, verified and warmed up."""
    model = bentoml.models.get(tag)
    manifest = json.loads(Path(model.path_of(MANIFEST)).read_text())
    return load_local(
        Fetched(
            name=manifest["pipeline"],
            version=manifest["version"],
            run_id=manifest["run_id"],
            model_dir=Path(model.path_of(MODEL_DIR)),
            recorded=manifest["sha256"],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the bundle tag")
    args = parser.parse_args()
    tag = bundle(GatewaySettings())
    args.out.write_text(json.dumps({"model": tag}) + "\n")
    print(f"bundled {tag} → {args.out}")


if __name__ == "__main__":
    main()
