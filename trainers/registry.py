"""Registry aliases and the promotion gate.

Every run registers a version with alias ``challenger``. ``champion`` moves only through
:func:`promote` (the gate or a person), which records the champion it replaced on the new
version, so :func:`rollback` can step back one champion at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from trainers import packaging
from trainers.contract import Pipeline, Predictor
from trainers.errors import RegistryError

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "champion.previous"
PROMOTED_AT = "champion.promoted_at"
PROMOTED_BY = "champion.promoted_by"
ROLLED_BACK_AT = "champion.rolled_back_at"


NOT_FOUND = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at, or ``None`` when the alias (or the model) is unset; a
    store that cannot answer raises."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in NOT_FOUND:
            return None
        raise


def aliases_by_version(client: MlflowClient, name: str) -> dict[str, list[str]]:
    """``version → sorted aliases`` (version searches do not carry aliases in every store)."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code in NOT_FOUND:
            return {}
        raise
    out: dict[str, list[str]] = {}
    for alias, version in sorted(model.aliases.items()):
        out.setdefault(str(version), []).append(alias)
    return out


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        known = [str(v.version) for v in client.search_model_versions(f"name = '{name}'")]
        raise RegistryError(
            f"model {name!r} has no version {version!r}; versions: "
            f"{', '.join(sorted(known, key=int)) or 'none'}"
        ) from exc


def resolve(client: MlflowClient, ref: str) -> tuple[ModelVersion | None, str]:
    """``NAME@ALIAS``, ``NAME/VERSION`` or a run id → (version or None, run id)."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        mv = alias_version(client, name, alias)
        if mv is None:
            raise RegistryError(f"model {name!r} has no alias {alias!r}")
        return mv, str(mv.run_id)
    if "/" in ref:
        name, version = ref.split("/", 1)
        mv = get_version(client, name, version)
        return mv, str(mv.run_id)
    return None, ref


def promote(client: MlflowClient, name: str, version: str, *, by: str) -> ModelVersion | None:
    """Point ``champion`` at ``version``; return the champion it replaced (if any)."""
    get_version(client, name, version)
    previous = alias_version(client, name, CHAMPION)
    if previous is not None and str(previous.version) == str(version):
        return previous
    client.set_model_version_tag(
        name, version, PREVIOUS_CHAMPION, str(previous.version) if previous else ""
    )
    client.set_model_version_tag(name, version, PROMOTED_AT, str(int(time.time())))
    client.set_model_version_tag(name, version, PROMOTED_BY, by)
    client.set_registered_model_alias(name, CHAMPION, version)
    return previous


def rollback(client: MlflowClient, name: str) -> tuple[str, str]:
    """Move ``champion`` back to the champion before it; return (from version, to version)."""
    current = alias_version(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"model {name!r} has no champion to roll back")
    previous = current.tags.get(PREVIOUS_CHAMPION, "")
    if not previous:
        raise RegistryError(
            f"{name} v{current.version} is the first champion; there is nothing to roll back to"
        )
    get_version(client, name, previous)
    client.set_model_version_tag(name, current.version, ROLLED_BACK_AT, str(int(time.time())))
    client.set_registered_model_alias(name, CHAMPION, previous)
    return str(current.version), previous


@dataclass(frozen=True)
class GateResult:
    decision: str  # "promoted" | "rejected"
    reason: str
    metric: str
    challenger_score: float
    champion_score: float | None
    champion_version: str | None
    min_improvement: float

    def tags(self) -> dict[str, str]:
        return {
            "gate.decision": self.decision,
            "gate.reason": self.reason,
            "gate.metric": self.metric,
            "gate.challenger_score": repr(self.challenger_score),
            "gate.champion_score": "" if self.champion_score is None else repr(self.champion_score),
            "gate.champion_version": self.champion_version or "",
            "gate.min_improvement": repr(self.min_improvement),
        }


def load_predictor(name: str, version: str) -> Predictor[Any, Any]:
    """The typed predictor of a registered version, loaded through MLflow."""
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    return packaging.unwrap(model).predictor


def gate(
    pipeline: Pipeline[Any, Any, Any],
    challenger: Predictor[Any, Any],
    champion: ModelVersion | None,
    holdout: pd.DataFrame,
    min_improvement: float,
) -> GateResult:
    """Score challenger and champion on the same holdout; promote when the challenger is at least
    ``min_improvement`` better in the metric's direction."""
    metric = pipeline.metric
    challenger_score = pipeline.score(challenger, holdout)
    if champion is None:
        return GateResult(
            "promoted",
            "no champion yet",
            metric.name,
            challenger_score,
            None,
            None,
            min_improvement,
        )
    champion_score = pipeline.score(load_predictor(pipeline.name, str(champion.version)), holdout)
    improvement = metric.improvement(challenger_score, champion_score)
    promoted = improvement >= min_improvement
    reason = (
        f"{metric.name} {challenger_score:.4f} vs champion v{champion.version} "
        f"{champion_score:.4f} ({metric.direction.value}): improvement {improvement:+.4f} "
        f"{'>=' if promoted else '<'} required {min_improvement:+.4f}"
    )
    return GateResult(
        "promoted" if promoted else "rejected",
        reason,
        metric.name,
        challenger_score,
        champion_score,
        str(champion.version),
        min_improvement,
    )
