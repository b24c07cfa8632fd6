"""The monitoring assets of ``deploy/`` as tests read them (the rules, the Grafana dashboard, the
binaries that check them), and the metric tables of the docs that ``/metrics`` is held to."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO

DEPLOY = REPO / "deploy"
RULES = DEPLOY / "rules" / "gateway.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"


def tool(name: str) -> str:
    """The path of a monitoring binary; a clear failure (never a skip) when it is missing."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not on PATH: run `make tools` (Debian's prometheus packages)")
    return found


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict[str, Any]:
    found: dict[str, Any] = json.loads((DASHBOARDS / "lineage-gateway.json").read_text())
    return found


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` for every target of every panel (rows hold no queries)."""
    panels = [p for p in board["panels"] if p["type"] != "row"]
    panels += [p for row in board["panels"] if row["type"] == "row" for p in row["panels"]]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]


def documented_metrics(heading: str) -> list[str]:
    """The metric names in the docs' table under ``heading``."""
    readme = "\n".join(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))
    section = readme.split(f"\n{heading}\n", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `(gateway_[a-z_]+)`", section, re.M)
