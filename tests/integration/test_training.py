"""Training against real MLflow stores: registry, lineage, gate, rollback, retrain — on the
embedded sqlite default, and the lineage, gate and retrain tests again on ``mlflow server`` with a
PostgreSQL backend and proxied artifacts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import FAST_LOANS, TINY_REVIEWS, Tracking, make_snapshot, train_ok
from tests.helpers import cli, free_port
from trainers import lineage, pipelines
from trainers.packaging import unwrap
from trainers.snapshots import sha256_file


def client_for(uri: str) -> MlflowClient:
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, uri)


def lineage_json(uri: str, ref: str) -> dict[str, Any]:
    result = cli(uri, "lineage", ref, "--json")
    assert result.exit_code == 0, result.output
    payload: dict[str, Any] = json.loads(result.output)
    return payload


def champion(uri: str, name: str) -> str:
    return str(client_for(uri).get_model_version_by_alias(name, "champion").version)


@pytest.mark.parametrize(
    ("name", "extra", "objects"),
    [
        (
            "loans",
            FAST_LOANS,
            [
                {
                    "income": 52000,
                    "age": 34,
                    "loan_amount": 12000,
                    "term_months": 36,
                    "employment_status": "employed",
                    "purpose": "car",
                },
                {
                    "income": 9000,
                    "age": 22,
                    "loan_amount": 30000,
                    "term_months": 60,
                    "employment_status": "unemployed",
                    "purpose": "business",
                    "existing_debt": 20000,
                    "credit_history_years": 1.5,
                },
            ],
        ),
        (
            "reviews",
            TINY_REVIEWS,
            [
                {"text": "the acting was superb and the plot gripping", "title": "loved it"},
                {"text": "boring, predictable and far too long"},
            ],
        ),
    ],
)
def test_train_register_load_predict(
    store: str,
    request: pytest.FixtureRequest,
    name: str,
    extra: list[str],
    objects: list[dict[str, Any]],
) -> None:
    data = request.getfixturevalue(f"{name}_data")
    output = train_ok(store, name, "--data", str(data), *extra)
    assert "gate promoted" in output

    client_for(store)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    pipeline = pipelines.get(name)
    inputs = [pipeline.Input.model_validate(o) for o in objects]
    answers = unwrap(model).predictor.predict_batch(inputs)
    assert [type(a) for a in answers] == [pipeline.Output] * len(objects)

    # MLflow's schema enforcement refuses int64 for double columns: send what the signature says
    doubles = {
        c.name: "float64"
        for c in model.metadata.get_input_schema().inputs
        if c.type.name == "double" and c.name in pd.DataFrame(objects)
    }
    frame = model.predict(pd.DataFrame(objects).astype(doubles))
    assert list(frame.columns) == list(pipeline.Output.model_fields)
    assert frame.to_dict("records") == [a.model_dump() for a in answers]


def test_lineage_records_everything(
    tracking: Tracking, loans_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tracking.uri
    repo = tmp_path / "project"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.org", "-c", "user.name=t"]
    (repo / "notes.txt").write_text("v1\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "notes.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)

    monkeypatch.chdir(repo)
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    info = lineage_json(store, "loans@champion")
    run = info["run"]
    client = client_for(store)
    run_id = run["run_id"]

    assert run["params"]["epochs"] == "4"
    assert run["params"]["seed"] == "0"
    assert run["seed"] == "0"
    history = client.get_metric_history(run_id, "valid_auc")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert "test_auc" in run["metrics"]
    assert run["data"] == {
        "source": str(loans_data.resolve()),
        "sha256": sha256_file(loans_data),
        "rows": 3000,
    }
    inputs = client.get_run(run_id).inputs
    assert inputs is not None
    dataset_inputs = inputs.dataset_inputs
    assert dataset_inputs
    assert dataset_inputs[0].dataset.source
    assert run["code"]["git_sha"] == head.stdout.strip()
    assert run["code"]["dirty"] == "false"
    assert len(run["code"]["pipeline_sha256"]) == 64
    assert run["environment"]["python"].count(".") == 2
    assert run["environment"]["packages"]["torch"].startswith("2.13.0")
    assert run["environment"]["packages"]["mlflow"] == mlflow.__version__
    assert run["parent_run_id"] is None
    assert run["trigger"] is None

    artifacts = {a.path for a in client.list_artifacts(run_id, "schemas")}
    assert artifacts == {"schemas/input.json", "schemas/output.json", "schemas/params.json"}
    schema = json.loads(Path(client.download_artifacts(run_id, "schemas/input.json")).read_text())
    assert schema["properties"]["age"]["minimum"] == 18
    assert [a.path for a in client.list_artifacts(run_id, "training")] == ["training/curves.png"]
    reference = pd.read_parquet(client.download_artifacts(run_id, "drift/reference.parquet"))
    assert len(reference) == 1000
    assert "prediction.default_probability" in reference

    # every model file's sha256 matches what the run recorded
    model_dir = Path(mlflow.artifacts.download_artifacts(run["artifacts"]["model_uri"]))
    recorded = run["artifacts"]["sha256"]
    assert "artifacts/predictor/model.safetensors" in recorded
    for relative, digest in recorded.items():
        assert sha256_file(model_dir / relative) == digest, relative
    assert recorded["artifacts/predictor/model.safetensors"] == run["artifacts"]["weights_sha256"]
    assert run["artifacts"]["manifest_sha256"] == lineage.manifest_sha256(recorded)

    # the readable tree names the same facts
    tree = cli(store, "lineage", "loans@champion").output
    for fact in (run_id, sha256_file(loans_data), head.stdout.strip(), "dirty: false"):
        assert fact in tree

    (repo / "notes.txt").write_text("v2\n")
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    assert lineage_json(store, "loans@challenger")["run"]["code"]["dirty"] == "true"


def test_retrain_chain_names_parents_and_triggers(
    tracking: Tracking, loans_data: Path, snapshots: Path
) -> None:
    store = tracking.uri
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS, "--param", "seed=7")
    first = lineage_json(store, "loans/1")["run"]
    shifted = make_snapshot(snapshots, "loans", 2000, shift=0.5, seed=3)

    result = cli(
        store,
        "retrain",
        "--from-run",
        first["run_id"],
        "--data",
        str(shifted),
        "--trigger",
        "alert:drift-1",
    )
    assert result.exit_code == 0, result.output
    second = lineage_json(store, "loans/2")["run"]
    assert second["parent_run_id"] == first["run_id"]
    assert second["trigger"] == "alert:drift-1"
    assert second["params"] == first["params"]  # same recipe, same seed
    assert second["data"]["sha256"] == sha256_file(shifted)

    result = cli(store, "retrain", "--from-run", second["run_id"], "--trigger", "manual check")
    assert result.exit_code == 0, result.output
    third = lineage_json(store, "loans/3")["run"]
    assert third["data"]["sha256"] == second["data"]["sha256"]  # parent's data by default
    chain = [third, third["parent"], third["parent"]["parent"]]
    assert [r["run_id"] for r in chain] == [third["run_id"], second["run_id"], first["run_id"]]
    assert [r["trigger"] for r in chain] == ["manual check", "alert:drift-1", None]
    tree = cli(store, "lineage", "loans/3").output
    assert tree.count("parent") >= 2
    assert first["run_id"] in tree
    assert "alert:drift-1" in tree

    runs = cli(store, "runs", "loans").output
    assert "alert:drift-1" in runs
    assert "manual check" in runs


def test_gate_rejects_worse_challenger_and_rollback(tracking: Tracking, loans_data: Path) -> None:
    store = tracking.uri
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    output = train_ok(store, "loans", "--data", str(loans_data), "--param", "epochs=0")
    assert "gate rejected" in output
    assert champion(store, "loans") == "1"

    client = client_for(store)
    v2 = client.get_model_version("loans", "2")
    assert v2.tags["gate.decision"] == "rejected"
    assert v2.tags["gate.champion_version"] == "1"
    champion_score, challenger_score = (
        float(v2.tags["gate.champion_score"]),
        float(v2.tags["gate.challenger_score"]),
    )
    assert challenger_score < champion_score
    run = client.get_run(str(v2.run_id))
    assert run.data.tags["gate.decision"] == "rejected"
    assert run.data.metrics["gate_champion_score"] == pytest.approx(champion_score)
    assert run.data.metrics["gate_challenger_score"] == pytest.approx(challenger_score)
    assert "challenger" in v2.aliases

    assert cli(store, "promote", "loans", "2").exit_code == 0
    assert champion(store, "loans") == "2"
    result = cli(store, "rollback", "loans")
    assert result.exit_code == 0
    assert "v2 → v1" in result.output
    assert champion(store, "loans") == "1"
    assert lineage_json(store, "loans/1")["run"]["versions"][0]["aliases"] == ["champion"]
    runs = cli(store, "runs", "loans").output
    assert "challenger" in runs
    assert "champion" in runs
    result = cli(store, "rollback", "loans")
    assert result.exit_code == 1
    assert "nothing to roll back" in result.output
    assert champion(store, "loans") == "1"


def test_same_data_params_seed_give_identical_weights(store: str, loans_data: Path) -> None:
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    first, second = (lineage_json(store, f"loans/{v}")["run"] for v in (1, 2))
    assert first["artifacts"]["weights_sha256"] == second["artifacts"]["weights_sha256"]
    assert first["metrics"]["test_auc"] == second["metrics"]["test_auc"]


def test_a_tracking_server_that_is_down_is_one_line_without_its_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://gateway:hunter2@127.0.0.1:{free_port()}"
    for args in (["train", "loans"], ["rollback", "loans"], ["lineage", "loans@champion"]):
        result = cli(uri, *args)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        assert lines[0].startswith("error: tracking store http://gateway:***@127.0.0.1")
        assert "hunter2" not in result.output
        assert "Traceback" not in result.output
