"""``trainers``: train, retrain, promote, roll back, read lineage, list runs, write snapshots."""

from __future__ import annotations

import json
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from requests.exceptions import RequestException
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

from trainers import drift, lineage, pipelines, registry, traces, training
from trainers.errors import RegistryError, TrainersError
from trainers.redaction import hide_in_logs, url_password
from trainers.snapshots import write_snapshot
from trainers.sqlstore import StoreError, redact, scrub
from trainers.tracking import connect, tracking_uri

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class _ProgressReporter:
    """Draws one progress bar per run (epochs) plus a line per stage."""

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

    def __enter__(self) -> _ProgressReporter:
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


def _parse_kv(pairs: tuple[str, ...]) -> dict[str, str]:
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not of the form key=value", param_hint="--param")
        parsed[key.strip()] = value.strip()
    return parsed


class _Group(click.Group):
    """Turns :class:`TrainersError`, and what the tracking or shared store answers when it
    refuses or cannot be reached, into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrainersError as exc:
            _fail(str(exc), exc.exit_code)
        except (MlflowException, RequestException) as exc:
            uri = ctx.obj if isinstance(ctx.obj, str) else ""
            _fail(scrub(f"tracking store {redact(uri)}: {_first_line(exc)}", uri), 1)
        except StoreError as exc:
            _fail(str(exc), 1)


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _fail(message: str, code: int) -> None:
    err.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


@click.group(cls=_Group)
@click.option(
    "--tracking-uri",
    "uri",
    default=None,
    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).",
)
@click.pass_context
def main(ctx: click.Context, uri: str | None) -> None:
    """Train pipelines on business objects with full lineage in MLflow."""
    # MLflow's hints about dataset sources and integer columns do not apply: schemas are explicit.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")
    ctx.obj = tracking_uri(uri)
    hide_in_logs([url_password(ctx.obj)])


def _client(ctx: click.Context) -> MlflowClient:
    return connect(ctx.obj)


def _report(result: training.TrainResult) -> None:
    gate = result.gate
    colour = "green" if gate.decision == "promoted" else "yellow"
    out.print(
        f"{result.pipeline} v{result.version} (run {result.run_id}): "
        f"test {gate.metric}={result.test_score:.4f}; gate [{colour}]{gate.decision}[/] — "
        f"{gate.reason}",
        highlight=False,
        soft_wrap=True,
    )


def _run_training(ctx: click.Context, request: training.TrainRequest) -> None:
    client = _client(ctx)
    with _ProgressReporter() as reporter:
        result = training.train(client, request, reporter)
    _report(result)


_min_improvement = click.option(
    "--min-improvement",
    type=float,
    default=0.0,
    show_default=True,
    help="Promote only if the challenger beats the champion by this much on the holdout "
    "(negative: tolerate a small loss).",
)


@main.command()
@click.argument("name")
@click.option("--data", type=click.Path(path_type=Path), help="Snapshot to train on (parquet).")
@click.option("--param", "params", multiple=True, metavar="K=V", help="Override a param.")
@_min_improvement
@click.option(
    "--unless-champion", is_flag=True, help="Do nothing if the pipeline already has a champion."
)
@click.pass_context
def train(
    ctx: click.Context,
    name: str,
    data: Path | None,
    params: tuple[str, ...],
    min_improvement: float,
    unless_champion: bool,
) -> None:
    """Train pipeline NAME, log it with lineage, register it and run the promotion gate."""
    pipelines.get(name)
    if unless_champion:
        champion = registry.alias_version(_client(ctx), name, registry.CHAMPION)
        if champion is not None:
            out.print(f"{name} already has a champion: v{champion.version}; not training")
            return
    request = training.TrainRequest(
        pipeline=name, data=data, params=_parse_kv(params), min_improvement=min_improvement
    )
    _run_training(ctx, request)


@main.command()
@click.option("--from-run", "run_id", required=True, help="The run whose recipe to repeat.")
@click.option(
    "--data", type=click.Path(path_type=Path), help="New snapshot (default: the parent's)."
)
@click.option("--trigger", default=None, help="Why this retrain happens (e.g. an alert id).")
@click.option("--param", "params", multiple=True, metavar="K=V", help="Override a param.")
@_min_improvement
@click.pass_context
def retrain(
    ctx: click.Context,
    run_id: str,
    data: Path | None,
    trigger: str | None,
    params: tuple[str, ...],
    min_improvement: float,
) -> None:
    """Repeat a run's recipe (pipeline, params, seed), on new data if given, then gate it."""
    request = training.retrain_request(
        _client(ctx),
        run_id,
        data,
        trigger,
        min_improvement=min_improvement,
        overrides=_parse_kv(params),
    )
    _run_training(ctx, request)


@main.command()
@click.argument("name")
@click.argument("version")
@click.pass_context
def promote(ctx: click.Context, name: str, version: str) -> None:
    """Make VERSION of NAME the champion, bypassing the gate."""
    previous = registry.promote(_client(ctx), name, version, by="manual")
    was = f" (was v{previous.version})" if previous else ""
    out.print(f"{name}: champion → v{version}{was}")


@main.command()
@click.argument("name")
@click.pass_context
def rollback(ctx: click.Context, name: str) -> None:
    """Move NAME's champion back to the champion before it."""
    current, previous = registry.rollback(_client(ctx), name)
    out.print(f"{name}: champion v{current} → v{previous}")


@main.command("lineage")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead.")
@click.option(
    "--store",
    "store_url",
    default=None,
    help="The gateway's shared store, for request ids and alerts (default: $GATEWAY_STORE_URL, "
    "else gateway-state/predictions.db here).",
)
@click.pass_context
def lineage_cmd(ctx: click.Context, ref: str, as_json: bool, store_url: str | None) -> None:
    """Show where a model or an answer came from. REF is NAME@ALIAS, NAME/VERSION, a run id, or
    the request id of an answer (from any replica)."""
    client = _client(ctx)
    url = store_url or traces.default_store_url()
    prediction = traces.find_prediction(url, ref) if traces.is_request_id(ref) else None
    version: ModelVersion | None
    if prediction is not None:
        version = registry.get_version(client, prediction.model, prediction.version)
        run_id = str(version.run_id)
    else:
        version, run_id = registry.resolve(client, ref)
    try:
        info = lineage.read_run(client, run_id)
    except TrainersError as exc:
        if traces.is_request_id(ref):
            raise RegistryError(
                f"{ref} is neither a request id in the prediction log ({redact(url)}) nor a run "
                "in the tracking store"
            ) from exc
        raise
    trigger = info.tags.get(lineage.TRIGGER)
    loop = traces.trigger_record(url, trigger) if trigger else None
    if as_json:
        payload = {
            "ref": ref,
            "prediction": None if prediction is None else prediction.to_dict(),
            "version": None if version is None else str(version.version),
            "run": info.to_dict(),
            "loop": loop,
        }
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
        return
    if prediction is not None:
        root = Tree(f"[bold]answer {prediction.request_id}[/] ({_when(int(prediction.ts * 1000))})")
        root.add(f"object: {json.dumps(prediction.input, sort_keys=True)}")
        root.add(f"answer: {json.dumps(prediction.output, sort_keys=True)}")
        if prediction.label is not None:
            root.add(f"ground truth: {json.dumps(prediction.label)}")
        parent = root.add(f"[bold]{prediction.model} v{prediction.version}[/]")
        _run_tree(parent, info.to_dict(), loop=loop)
    elif version is not None:
        aliases = ", ".join(sorted(version.aliases)) or "no alias"
        root = Tree(f"[bold]{version.name} v{version.version}[/] ({aliases})")
        _run_tree(root, info.to_dict(), loop=loop)
    else:
        root = Tree(f"[bold]run {run_id}[/]")
        _run_tree(root, info.to_dict(), label=False, loop=loop)
    out.print(root, highlight=False)


@main.command("drift")
@click.argument("ref")
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Snapshot to compare (parquet).",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    default=Path("drift-report.html"),
    show_default=True,
    help="Where to write the HTML report.",
)
@click.option("--num-method", default="ks", show_default=True, help="Test for number columns.")
@click.option("--cat-method", default="chisquare", show_default=True, help="Test for categories.")
@click.option(
    "--drift-share", default=0.5, show_default=True, help="Share of drifted columns = drift."
)
@click.pass_context
def drift_cmd(
    ctx: click.Context,
    ref: str,
    data_path: Path,
    out_path: Path,
    num_method: str,
    cat_method: str,
    drift_share: float,
) -> None:
    """Compare a snapshot with the reference sample of a model (REF: NAME@ALIAS, NAME/VERSION or
    a run id), as the serving monitor does; write the HTML report."""
    client = _client(ctx)
    _, run_id = registry.resolve(client, ref)
    options = drift.DriftOptions(num_method, cat_method, None, drift_share)
    with out.status("comparing …"):
        result = drift.compare_snapshot(client, run_id, data_path, options, out_path)
    table = Table(title=f"{ref} vs {data_path.name}: {result.describe()}")
    for heading in ("column", "type", "test", "score", "threshold", "drifted"):
        table.add_column(heading)
    for c in result.columns:
        mark = "[red]yes[/]" if c.drifted else "no"
        table.add_row(c.column, c.kind, c.method, f"{c.score:.4g}", f"{c.threshold:.3g}", mark)
    out.print(table)
    out.print(f"report: {out_path.resolve()}")


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


@main.command()
@click.argument("name")
@click.option("--limit", default=50, show_default=True, help="Newest runs to show.")
@click.pass_context
def runs(ctx: click.Context, name: str, limit: int) -> None:
    """List NAME's runs, newest first, with version, aliases, score, data and gate."""
    pipeline = pipelines.get(name)
    client = _client(ctx)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        out.print(f"no runs for {name} yet")
        return
    versions = {mv.run_id: mv for mv in client.search_model_versions(f"name = '{name}'")}
    aliases = registry.aliases_by_version(client, name)
    table = Table(title=f"{name} runs")
    for column in (
        "run",
        "started",
        "status",
        "version",
        "aliases",
        f"test {pipeline.metric.name}",
        "data sha256",
        "rows",
        "parent",
        "trigger",
        "gate",
    ):
        table.add_column(column)
    for run in client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit
    ):
        tags = run.data.tags
        mv = versions.get(run.info.run_id)
        score = run.data.metrics.get(f"test_{pipeline.metric.name}")
        table.add_row(
            run.info.run_id[:12],
            _when(run.info.start_time),
            run.info.status,
            f"v{mv.version}" if mv else "",
            ", ".join(aliases.get(str(mv.version), [])) if mv else "",
            "" if score is None else f"{score:.4f}",
            tags.get(lineage.DATA_SHA256, "")[:12],
            tags.get(lineage.DATA_ROWS, ""),
            tags.get(lineage.PARENT_RUN, "")[:12],
            tags.get(lineage.TRIGGER, ""),
            tags.get("gate.decision", ""),
        )
    out.print(table)


@main.command()
@click.argument("name")
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Parquet file to write.",
)
@click.option(
    "--rows", type=click.IntRange(min=1), help="Rows to generate (default: the pipeline's own)."
)
@click.option(
    "--shift",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="0 = the reference population, 1 = fully drifted.",
)
@click.option("--seed", default=0, show_default=True, type=int)
def data(name: str, out_path: Path, rows: int | None, shift: float, seed: int) -> None:
    """Write a seeded demo snapshot of pipeline NAME."""
    pipeline = pipelines.get(name)
    rows = rows or pipeline.default_rows
    frame = pipeline.generate(rows, shift, seed)
    meta = {"pipeline": name, "rows": rows, "shift": shift, "seed": seed}
    digest = write_snapshot(frame, out_path, meta)
    out.print(
        f"wrote {rows} {name} rows (shift {shift}, seed {seed}) to {out_path}\nsha256 {digest}"
    )


@main.command("pipelines")
def list_pipelines() -> None:
    """List the pipelines that ship here."""
    for name in pipelines.available():
        p = pipelines.get(name)
        gate = f"gate: {p.metric.name}, {p.metric.direction}"
        out.print(f"{name}: {p.Input.__name__} → {p.Output.__name__} ({gate})")
