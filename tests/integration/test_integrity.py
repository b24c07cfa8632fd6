"""A model whose files differ from the sha256 values recorded at training is refused at load:
when its bytes were changed, when the record itself was edited (to match changed bytes, or
alone), from the registry and from a bundle built into a bento."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow import MlflowClient

from gateway.bundle import MANIFEST, MODEL_DIR
from gateway.loader import IntegrityError, load
from tests.conftest import FAST_LOANS, train_ok
from tests.helpers import REPO, VENV_BIN, in_process_settings
from trainers.lineage import sha256_tree
from trainers.snapshots import sha256_file

WEIGHTS = "artifacts/predictor/model.safetensors"


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def model_files(store: str) -> tuple[Path, Path]:
    """The registered model's directory and its run's recorded sha256 values (a sqlite store
    keeps artifacts on local disk)."""
    client = MlflowClient(store, store)
    version = client.get_model_version_by_alias("loans", "champion")
    model_dir = Path(urlparse(client.get_model_version_download_uri("loans", version.version)).path)
    run_root = Path(urlparse(str(client.get_run(str(version.run_id)).info.artifact_uri)).path)
    return model_dir, run_root / "lineage" / "artifact_sha256.json"


@pytest.mark.parametrize("edit", ["bytes", "bytes and record", "record"])
def test_a_changed_model_is_refused_from_the_registry(
    store: str, loans_data: Path, edit: str
) -> None:
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    settings = in_process_settings(store)
    assert load(settings).version == "1"
    model_dir, record = model_files(store)
    recorded = json.loads(record.read_text())
    if "bytes" in edit:
        flip_last_byte(model_dir / WEIGHTS)
    if "record" in edit:  # someone with write access to the store makes the record "match"
        recorded[WEIGHTS] = sha256_file(model_dir / WEIGHTS) if "bytes" in edit else "0" * 64
        record.write_text(json.dumps(recorded))
    with pytest.raises(IntegrityError) as refused:
        load(settings)
    expected = "were edited" if "record" in edit else "do not match the sha256"
    assert expected in str(refused.value)


def python(home: Path, store: str, *args: str) -> subprocess.CompletedProcess[str]:
    """This checkout's Python with ``args``, on the BentoML store at ``home``."""
    env = {**os.environ, "BENTOML_HOME": str(home), "GATEWAY_TRACKING_URI": store}
    return subprocess.run(
        [str(VENV_BIN / "python"), *args],
        cwd=REPO,
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def bundled_load(home: Path, store: str, bundle_json: Path) -> subprocess.CompletedProcess[str]:
    """Load the bundle named by ``bundle_json`` from the BentoML store at ``home``, as a bento's
    service does when the registry is out of reach."""
    script = (
        "import json\n"
        "from gateway.bundle import load_bundled\n"
        f"found = json.loads(open({str(bundle_json)!r}).read())\n"
        "model = load_bundled(found['model'], found.get('manifest_sha256'))\n"
        "print('loaded', model.name, model.version)\n"
    )
    return python(home, store, "-c", script)


def test_a_changed_bundle_is_refused(store: str, loans_data: Path, tmp_path: Path) -> None:
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    home, bundle_json = tmp_path / "bentoml", tmp_path / "bundle.json"
    made = python(home, store, "-m", "gateway.bundle", "--out", str(bundle_json))
    assert made.returncode == 0, made.stderr
    assert "loaded loans 1" in bundled_load(home, store, bundle_json).stdout

    tag = json.loads(bundle_json.read_text())["model"]
    model_root = home / "models" / "loans" / tag.split(":")[1]
    manifest_path = model_root / MANIFEST
    weights = model_root / MODEL_DIR / WEIGHTS
    flip_last_byte(weights)
    refused = bundled_load(home, store, bundle_json)
    assert refused.returncode != 0
    assert "do not match the sha256" in refused.stderr

    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"] = {
        k: v for k, v in sha256_tree(model_root / MODEL_DIR).items() if k in manifest["sha256"]
    }
    manifest_path.write_text(json.dumps(manifest))
    refused = bundled_load(home, store, bundle_json)
    assert refused.returncode != 0
    assert "were edited" in refused.stderr
