"""``trainers``: train, retrain, promote, roll back, read lineage, list runs, write snapshots.

This module is the argument parser and nothing else at import: click and the standard library.
MLflow, torch, pandas and rich cost seconds to import, so each command imports what it needs when
it runs, and ``trainers --help`` answers at once. Each command gathers its facts into one
JSON-ready payload; ``--json`` prints that payload and :mod:`trainers.cli_output` draws the same
payload for people.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from trainers.errors import RegistryError, TrainersError
from trainers.redaction import hide_in_logs, url_password

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from trainers.training import TrainRequest, TrainResult

DISTRIBUTION = "lineage-gateway"


class _Group(click.Group):
    """Turns :class:`TrainersError`, and what the tracking or shared store answers when it
    refuses or cannot be reached, into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrainersError as exc:
            _fail(str(exc), max(exc.exit_code, _failure_code(ctx)))
        except Exception as exc:
            message = _store_failure(exc, ctx.obj)
            if message is None:
                raise
            _fail(message, _failure_code(ctx))


def _failure_code(ctx: click.Context) -> int:
    """1, except for `drift`, which says "drifted" with 1: its failures exit 2 (as `diff` does),
    so a CI job gated on it tells drift from trouble."""
    return 2 if ctx.invoked_subcommand == "drift" else 1


def _store_failure(exc: Exception, explicit_uri: str | None) -> str | None:
    """One line for an error the tracking store or the shared store answered with; ``None`` for
    any other error. The error classes are looked up only among loaded modules: a module that was
    never imported raised nothing, and importing MLflow here would slow down every refusal."""
    if isinstance(exc, _loaded(("trainers.sqlstore", "StoreError"))):
        return str(exc)
    tracking = (
        ("mlflow.exceptions", "MlflowException"),
        ("requests.exceptions", "RequestException"),
    )
    if not isinstance(exc, _loaded(*tracking)):
        return None
    from trainers.sqlstore import redact, scrub
    from trainers.tracking import tracking_uri

    uri = tracking_uri(explicit_uri)
    return scrub(f"tracking store {redact(uri)}: {_first_line(exc)}", uri)


def _loaded(*names: tuple[str, str]) -> tuple[type[BaseException], ...]:
    """The classes named ``(module, class)`` whose modules this process has imported."""
    return tuple(getattr(sys.modules[m], c) for m, c in names if m in sys.modules)


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _fail(message: str, code: int) -> None:
    from trainers.cli_output import fail

    fail(message, code)


def _parse_kv(pairs: tuple[str, ...]) -> dict[str, str]:
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not of the form key=value", param_hint="--param")
        parsed[key.strip()] = value.strip()
    return parsed


def _print_json(payload: Any) -> None:
    """``--json``: the payload is all that stdout holds (progress and errors go to stderr)."""
    click.echo(json.dumps(payload, indent=2, sort_keys=True))


_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout instead."
)


@click.group(cls=_Group)
@click.option(
    "--tracking-uri",
    "uri",
    default=None,
    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).",
)
@click.version_option(
    package_name=DISTRIBUTION, prog_name="trainers", message="%(prog)s %(version)s"
)
@click.pass_context
def main(ctx: click.Context, uri: str | None) -> None:
    """Train pipelines on business objects with full lineage in MLflow."""
    # MLflow's hints about dataset sources and integer columns do not apply: schemas are explicit.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")
    # The URI as given: resolving the default needs trainers.tracking, which imports MLflow.
    # The environment's URLs are hidden anyway (trainers.redaction reads them).
    ctx.obj = uri
    hide_in_logs([url_password(uri)])


def _client(ctx: click.Context) -> MlflowClient:
    from trainers.tracking import connect, tracking_uri

    return connect(tracking_uri(ctx.obj))


def _run_training(ctx: click.Context, request: TrainRequest, as_json: bool) -> None:
    from trainers import training
    from trainers.cli_output import ProgressReporter

    client = _client(ctx)
    with ProgressReporter() as reporter:
        result = training.train(client, request, reporter)
    made = _trained(client, request, result)
    if as_json:
        _print_json(made)
        return
    from trainers.cli_output import show_training

    show_training(made)


def _trained(client: MlflowClient, request: TrainRequest, result: TrainResult) -> dict[str, Any]:
    """What a run made: the model version, its scores, the gate's decision and its aliases."""
    from trainers import registry

    return {
        "trained": True,
        "pipeline": result.pipeline,
        "model": result.pipeline,
        "version": result.version,
        "run_id": result.run_id,
        "parent_run_id": request.parent_run_id,
        "trigger": request.trigger,
        "data_sha256": result.data_sha256,
        "test_metric": result.gate.metric,
        "test_score": result.test_score,
        "gate": dataclasses.asdict(result.gate),
        "aliases": registry.aliases_by_version(client, result.pipeline).get(result.version, []),
    }


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
@_json_option
@click.pass_context
def train(
    ctx: click.Context,
    name: str,
    data: Path | None,
    params: tuple[str, ...],
    min_improvement: float,
    unless_champion: bool,
    as_json: bool,
) -> None:
    """Train pipeline NAME, log it with lineage, register it and run the promotion gate."""
    from trainers import pipelines, training

    pipelines.get(name)
    if unless_champion and _has_champion(ctx, name, as_json):
        return
    request = training.TrainRequest(
        pipeline=name, data=data, params=_parse_kv(params), min_improvement=min_improvement
    )
    _run_training(ctx, request, as_json)


def _has_champion(ctx: click.Context, name: str, as_json: bool) -> bool:
    """``--unless-champion``: whether NAME has a champion already (then it says so)."""
    from trainers import registry

    champion = registry.alias_version(_client(ctx), name, registry.CHAMPION)
    if champion is None:
        return False
    skipped = {"trained": False, "pipeline": name, "champion": str(champion.version)}
    if as_json:
        _print_json(skipped)
        return True
    from trainers.cli_output import show_skipped

    show_skipped(skipped)
    return True


@main.command()
@click.option("--from-run", "run_id", required=True, help="The run whose recipe to repeat.")
@click.option(
    "--data", type=click.Path(path_type=Path), help="New snapshot (default: the parent's)."
)
@click.option("--trigger", default=None, help="Why this retrain happens (e.g. an alert id).")
@click.option("--param", "params", multiple=True, metavar="K=V", help="Override a param.")
@_min_improvement
@_json_option
@click.pass_context
def retrain(
    ctx: click.Context,
    run_id: str,
    data: Path | None,
    trigger: str | None,
    params: tuple[str, ...],
    min_improvement: float,
    as_json: bool,
) -> None:
    """Repeat a run's recipe (pipeline, params, seed), on new data if given, then gate it."""
    from trainers import training

    request = training.retrain_request(
        _client(ctx),
        run_id,
        data,
        trigger,
        min_improvement=min_improvement,
        overrides=_parse_kv(params),
    )
    _run_training(ctx, request, as_json)


@main.command()
@click.argument("name")
@click.argument("version")
@_json_option
@click.pass_context
def promote(ctx: click.Context, name: str, version: str, as_json: bool) -> None:
    """Make VERSION of NAME the champion, bypassing the gate."""
    from trainers import registry

    previous = registry.promote(_client(ctx), name, version, by="manual")
    moved = {
        "model": name,
        "champion": version,
        "previous_champion": None if previous is None else str(previous.version),
    }
    if as_json:
        _print_json(moved)
        return
    from trainers.cli_output import show_promotion

    show_promotion(moved)


@main.command()
@click.argument("name")
@_json_option
@click.pass_context
def rollback(ctx: click.Context, name: str, as_json: bool) -> None:
    """Move NAME's champion back to the champion before it."""
    from trainers import registry

    current, previous = registry.rollback(_client(ctx), name)
    moved = {"model": name, "champion": previous, "previous_champion": current}
    if as_json:
        _print_json(moved)
        return
    from trainers.cli_output import show_rollback

    show_rollback(moved)


@main.command("lineage")
@click.argument("ref")
@_json_option
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
    from trainers import lineage, registry, traces
    from trainers.sqlstore import redact

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
        _print_json(payload)
        return
    from trainers.cli_output import show_lineage

    show_lineage(prediction, version, info.to_dict(), loop)


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
@_json_option
@click.pass_context
def drift_cmd(
    ctx: click.Context,
    ref: str,
    data_path: Path,
    out_path: Path,
    num_method: str,
    cat_method: str,
    drift_share: float,
    as_json: bool,
) -> None:
    """Compare a snapshot with the reference sample of a model (REF: NAME@ALIAS, NAME/VERSION or
    a run id), as the serving monitor does; write the HTML report.

    Exits 1 when the snapshot drifted, 0 when it did not, and 2 when the command is refused or
    fails (an unknown model, a tracking store out of reach), so that it can gate a CI job."""
    from trainers import drift, registry
    from trainers.cli_output import err, show_drift

    client = _client(ctx)
    _, run_id = registry.resolve(client, ref)
    options = drift.DriftOptions(num_method, cat_method, None, drift_share)
    with err.status("comparing …"):
        result = drift.compare_snapshot(client, run_id, data_path, options, out_path)
    payload = {
        "ref": ref,
        "run_id": run_id,
        "data": str(data_path),
        "report": str(out_path.resolve()),
        "verdict": result.describe(),
        **result.to_json(),
    }
    if as_json:
        _print_json(payload)
    else:
        show_drift(payload)
    if result.detected:
        ctx.exit(1)


@main.command()
@click.argument("name")
@click.option("--limit", default=50, show_default=True, help="Newest runs to show.")
@_json_option
@click.pass_context
def runs(ctx: click.Context, name: str, limit: int, as_json: bool) -> None:
    """List NAME's runs, newest first, with version, aliases, score, data and gate."""
    from trainers import pipelines

    pipeline = pipelines.get(name)
    metric = pipeline.metric.name
    listed = {"pipeline": name, "metric": metric, "runs": _runs(_client(ctx), name, metric, limit)}
    if as_json:
        _print_json(listed)
        return
    from trainers.cli_output import show_runs

    show_runs(listed)


def _runs(client: MlflowClient, name: str, metric: str, limit: int) -> list[dict[str, Any]]:
    """NAME's newest runs, each with its version, aliases, ``test_<metric>``, data, parent and
    gate."""
    from trainers import lineage, registry

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    versions = {mv.run_id: mv for mv in client.search_model_versions(f"name = '{name}'")}
    aliases = registry.aliases_by_version(client, name)
    found = []
    for run in client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit
    ):
        tags = run.data.tags
        mv = versions.get(run.info.run_id)
        version = None if mv is None else str(mv.version)
        rows = tags.get(lineage.DATA_ROWS)
        found.append(
            {
                "run_id": run.info.run_id,
                "start_time": run.info.start_time,
                "status": run.info.status,
                "version": version,
                "aliases": aliases.get(version, []) if version else [],
                "test_score": run.data.metrics.get(f"test_{metric}"),
                "data_sha256": tags.get(lineage.DATA_SHA256),
                "rows": int(rows) if rows else None,
                "parent_run_id": tags.get(lineage.PARENT_RUN),
                "trigger": tags.get(lineage.TRIGGER),
                "gate": tags.get("gate.decision"),
            }
        )
    return found


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
@_json_option
def data(
    name: str, out_path: Path, rows: int | None, shift: float, seed: int, as_json: bool
) -> None:
    """Write a seeded demo snapshot of pipeline NAME."""
    from trainers import pipelines
    from trainers.snapshots import write_snapshot

    pipeline = pipelines.get(name)
    rows = rows or pipeline.default_rows
    frame = pipeline.generate(rows, shift, seed)
    meta = {"pipeline": name, "rows": rows, "shift": shift, "seed": seed}
    written = {**meta, "path": str(out_path), "sha256": write_snapshot(frame, out_path, meta)}
    if as_json:
        _print_json(written)
        return
    from trainers.cli_output import show_snapshot

    show_snapshot(written)


@main.command("pipelines")
@_json_option
def list_pipelines(as_json: bool) -> None:
    """List the pipelines that ship here."""
    from trainers import pipelines

    shipped = []
    for name in pipelines.available():
        p = pipelines.get(name)
        shipped.append(
            {
                "name": name,
                "input": p.Input.__name__,
                "output": p.Output.__name__,
                "metric": p.metric.name,
                "direction": str(p.metric.direction),
            }
        )
    if as_json:
        _print_json(shipped)
        return
    from trainers.cli_output import show_pipelines

    show_pipelines(shipped)
