"""The ``trainers`` CLI's conventions: help and ``--version`` without heavy imports, and ``--json``
output that parses, with nothing else on stdout."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from tests.helpers import REPO
from trainers.cli import main

HEAVY = ("mlflow", "torch", "pandas", "numpy", "evidently", "rich", "requests", "pydantic")

# Runs in a fresh interpreter: this test process has imported everything already.
LOADED_AFTER_HELP = """
import json, sys
from trainers.cli import main
for args in (["--help"], ["--version"], *([name, "--help"] for name in main.commands)):
    main(args, standalone_mode=False)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_help_and_version_import_none_of_the_heavy_modules() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOADED_AFTER_HELP],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert sorted(loaded & set(HEAVY)) == []


def test_version_prints_the_installed_distribution_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"trainers {importlib.metadata.version('lineage-gateway')}\n"


def test_every_command_that_prints_data_takes_json() -> None:
    for name, command in main.commands.items():
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert "--json" in options, f"trainers {name} has no --json"


def test_pipelines_json_lists_each_pipeline_with_its_gate() -> None:
    result = CliRunner().invoke(main, ["pipelines", "--json"])
    assert result.exit_code == 0, result.output
    shipped = {p["name"]: p for p in json.loads(result.stdout)}
    assert {"loans", "reviews"} <= set(shipped)
    assert shipped["loans"]["metric"] == "auc"
    assert shipped["loans"]["direction"] == "maximize"
    assert shipped["loans"]["input"] == "LoanApplication"


def test_data_json_names_the_file_it_wrote_and_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "loans.parquet"
    args = ["data", "loans", "--out", str(path), "--rows", "20", "--shift", "0.5", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    assert written == {
        "pipeline": "loans",
        "rows": 20,
        "shift": 0.5,
        "seed": 0,
        "path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def test_a_refusal_in_json_mode_exits_2_with_the_error_on_stderr_only() -> None:
    result = CliRunner().invoke(main, ["runs", "no-such-pipeline", "--json"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "unknown pipeline 'no-such-pipeline'" in result.stderr
