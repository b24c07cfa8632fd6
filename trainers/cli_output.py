"""What ``trainers`` prints for people: rich tables, trees, progress bars and error lines.

Kept apart from :mod:`trainers.cli` because rich takes a noticeable share of a second to import:
the CLI imports this module only once a command runs. Each ``show_*`` function draws the payload
that the command would print with ``--json``, so both outputs carry the same facts.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from trainers.traces import Prediction

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def fail(message: str, code: int) -> None:
    """Print ``message`` as one error line on stderr and exit with ``code``."""
    err.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


class ProgressReporter:
    """Draws one progress bar per run (epochs) plus a line per stage, on stderr."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            console=err,
        )
        self.task: Any = None

    def __enter__(self) -> ProgressReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, pipeline: str, run_id: str, epochs: int) -> None:
        err.print(f"run [cyan]{run_id}[/] ({pipeline})")
        self.task = self.progress.add_task(f"{pipeline} epochs", total=epochs, metrics="")

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        self.progress.update(self.task, completed=epoch, metrics=shown)

    def stage(self, text: str) -> None:
        self.progress.console.print(f"… {text}")


def show_training(run: dict[str, Any]) -> None:
    gate = run["gate"]
    colour = "green" if gate["decision"] == "promoted" else "yellow"
    out.print(
        f"{run['pipeline']} v{run['version']} (run {run['run_id']}): "
        f"test {run['test_metric']}={run['test_score']:.4f}; gate [{colour}]{gate['decision']}[/] "
        f"— {gate['reason']}",
        highlight=False,
        soft_wrap=True,
    )


def show_skipped(skipped: dict[str, Any]) -> None:
    out.print(f"{skipped['pipeline']} already has a champion: v{skipped['champion']}; not training")


def show_promotion(moved: dict[str, Any]) -> None:
    previous = moved["previous_champion"]
    was = f" (was v{previous})" if previous else ""
    out.print(f"{moved['model']}: champion → v{moved['champion']}{was}")


def show_rollback(moved: dict[str, Any]) -> None:
    out.print(f"{moved['model']}: champion v{moved['previous_champion']} → v{moved['champion']}")


def show_snapshot(written: dict[str, Any]) -> None:
    out.print(
        f"wrote {written['rows']} {written['pipeline']} rows (shift {written['shift']}, "
        f"seed {written['seed']}) to {written['path']}\nsha256 {written['sha256']}"
    )


def show_pipelines(shipped: list[dict[str, Any]]) -> None:
    for p in shipped:
        gate = f"gate: {p['metric']}, {p['direction']}"
        out.print(f"{p['name']}: {p['input']} → {p['output']} ({gate})")


def show_drift(found: dict[str, Any]) -> None:
    table = Table(title=f"{found['ref']} vs {Path(found['data']).name}: {found['verdict']}")
    for heading in ("column", "type", "test", "score", "threshold", "drifted"):
        table.add_column(heading)
    for c in found["columns"]:
        mark = "[red]yes[/]" if c["drifted"] else "no"
        score, threshold = f"{c['score']:.4g}", f"{c['threshold']:.3g}"
        table.add_row(c["column"], c["kind"], c["method"], score, threshold, mark)
    out.print(table)
    out.print(f"report: {found['report']}")


def show_runs(listed: dict[str, Any]) -> None:
    if not listed["runs"]:
        out.print(f"no runs for {listed['pipeline']} yet")
        return
    table = Table(title=f"{listed['pipeline']} runs")
    for column in (
        "run",
        "started",
        "status",
        "version",
        "aliases",
        f"test {listed['metric']}",
        "data sha256",
        "rows",
        "parent",
        "trigger",
        "gate",
    ):
        table.add_column(column)
    for run in listed["runs"]:
        table.add_row(*_run_row(run))
    out.print(table)


def _run_row(run: dict[str, Any]) -> tuple[str, ...]:
    """One run as the table shows it: ids cut to 12 characters, missing facts empty."""
    score, rows = run["test_score"], run["rows"]
    return (
        run["run_id"][:12],
        _when(run["start_time"]),
        run["status"],
        f"v{run['version']}" if run["version"] else "",
        ", ".join(run["aliases"]),
        "" if score is None else f"{score:.4f}",
        (run["data_sha256"] or "")[:12],
        "" if rows is None else str(rows),
        (run["parent_run_id"] or "")[:12],
        run["trigger"] or "",
        run["gate"] or "",
    )


def show_lineage(
    prediction: Prediction | None,
    version: ModelVersion | None,
    run: dict[str, Any],
    loop: dict[str, Any] | None,
) -> None:
    """The lineage tree: from the answer (a request id), the model version, or the run."""
    if prediction is not None:
        root = Tree(f"[bold]answer {prediction.request_id}[/] ({_when(int(prediction.ts * 1000))})")
        root.add(f"object: {json.dumps(prediction.input, sort_keys=True)}")
        root.add(f"answer: {json.dumps(prediction.output, sort_keys=True)}")
        if prediction.label is not None:
            root.add(f"ground truth: {json.dumps(prediction.label)}")
        parent = root.add(f"[bold]{prediction.model} v{prediction.version}[/]")
        _run_tree(parent, run, loop=loop)
    elif version is not None:
        aliases = ", ".join(sorted(version.aliases)) or "no alias"
        root = Tree(f"[bold]{version.name} v{version.version}[/] ({aliases})")
        _run_tree(root, run, loop=loop)
    else:
        root = Tree(f"[bold]run {run['run_id']}[/]")
        _run_tree(root, run, label=False, loop=loop)
    out.print(root, highlight=False)


def _loop_tree(node: Tree, loop: dict[str, Any]) -> None:
    alert, retrain = loop["alert"], loop["retrain"]
    if alert is not None:
        detail = alert["detail"]
        window = (
            f"drift window {detail.get('window')} (drift share {detail.get('share')})"
            if alert["source"] == "monitor"
            else f"labels {json.dumps(detail.get('labels', {}), sort_keys=True)}"
        )
        when = _when(int(alert["ts"] * 1000))
        node.add(f"alert: {alert['key']} from {alert['source']} at {when}\n  {window}")
    node.add(f"retrain: {retrain['result'] or 'running'} — {retrain['detail'] or ''}")


def _run_tree(
    parent: Tree, run: dict[str, Any], label: bool = True, loop: dict[str, Any] | None = None
) -> None:
    versions = ", ".join(f"v{v['version']}" for v in run["versions"]) or "unregistered"
    node = (
        parent.add(
            f"run [cyan]{run['run_id']}[/] {run['status']} {_when(run['start_time'])} ({versions})"
        )
        if label
        else parent
    )
    node.add("params: " + ", ".join(f"{k}={v}" for k, v in sorted(run["params"].items())))
    node.add("metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(run["metrics"].items())))
    data = run["data"]
    node.add(f"data: {data['source']}\n  sha256 {data['sha256']}  rows {data['rows']}")
    code = run["code"]
    node.add(
        f"code: git {code['git_sha']} (dirty: {code['dirty']}) in {code['repo']}\n"
        f"  pipeline source sha256 {code['pipeline_sha256']}"
    )
    env = run["environment"]
    packages = ", ".join(f"{k} {v}" for k, v in sorted(env["packages"].items()))
    node.add(f"environment: python {env['python']} on {env['platform']}\n  {packages}")
    artifacts = node.add(
        f"artifacts: {run['artifacts']['model_uri']}  manifest sha256 "
        f"{run['artifacts']['manifest_sha256']}"
    )
    for path, digest in sorted(run["artifacts"]["sha256"].items()):
        artifacts.add(f"{digest}  {path}")
    gate = run["gate"]
    if gate:
        node.add(f"gate: {gate.get('decision')} — {gate.get('reason')}")
    trigger = node.add(f"trigger: {run['trigger'] or 'initial training'}")
    if loop is not None:
        _loop_tree(trigger, loop)
    if run["parent"] is not None:
        _run_tree(node.add("parent"), run["parent"])
    elif run["parent_run_id"]:
        node.add(f"parent: {run['parent_run_id']} (not readable)")


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
