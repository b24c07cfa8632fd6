"""schemathesis against the OpenAPI document a real ``bentoml serve`` publishes (``GET
/docs.json`` on BentoML's port): valid and invalid requests generated from it, for every
documented route, get no server error (5xx), only documented status codes and content types,
and bodies that match the documented schemas.

Left out, each for a reason the document cannot express:

* ``POST /admin/reload``: without ``GATEWAY_RELOAD_TOKEN`` (as served here) the route is off
  and answers 404 to everything; with one, every generated request lacks it (401). Covered by
  the reload tests.
* ``GET /metrics``: BentoML's own route, Prometheus text; nothing to fuzz.

The number of examples is bounded (:data:`EXAMPLES` per operation and mode) and derandomized,
to keep the module near a minute on two cores. (schemathesis's pytest loader for a schema that
a fixture serves, ``schemathesis.pytest.from_fixture``, fails on pytest 9: the operations are
fuzzed here through their Hypothesis strategies instead.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import FAST_LOANS, train_ok
from tests.helpers import serve_gateway

EXAMPLES = 25
"""Generated requests per operation and generation mode (valid data, invalid data)."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SERVED = {"name": "loans", "version": "1"}
"""The OIP path parameters of the model served here."""
EXCLUDED = {("POST", "/admin/reload"), ("GET", "/metrics")}
"""Operations left out (see the module's docstring)."""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, loans_data: Path) -> Iterator[str]:
    """BentoML's port of a real ``bentoml serve`` of a loans champion."""
    tmp = tmp_path_factory.mktemp("openapi")
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    settings = {"poll_interval_s": "0", "state_dir": str(tmp / "state")}
    with serve_gateway(store, tmp, workers=1, settings=settings) as (base, _):
        yield base


def openapi_30(node: Any) -> Any:
    """``node`` of BentoML's document with its JSON schemas in OpenAPI 3.0's dialect. BentoML
    declares ``openapi: 3.0.2`` but embeds pydantic's JSON Schema 2020-12, whose numeric
    ``exclusiveMinimum`` and ``{"type": "null"}`` branches 3.0 does not have (schemathesis
    cannot generate a body from them): the same bounds as ``minimum`` plus the boolean
    ``exclusiveMinimum``, and ``nullable``."""
    if isinstance(node, list):
        return [openapi_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: openapi_30(value) for key, value in node.items()}
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        bound = out.get(exclusive)
        if isinstance(bound, int | float) and not isinstance(bound, bool):
            out[inclusive], out[exclusive] = bound, True
    branches = out.get("anyOf")
    if isinstance(branches, list) and {"type": "null"} in branches:
        rest = [branch for branch in branches if branch != {"type": "null"}]
        del out["anyOf"]
        if len(rest) == 1:
            out = {**rest[0], **out}
        else:
            out["anyOf"] = rest
        out["nullable"] = True
    return out


@pytest.fixture(scope="module")
def operations(gateway: str) -> list[Any]:
    """The documented operations, as schemathesis reads ``/docs.json``."""
    document = httpx.get(f"{gateway}/docs.json", timeout=30)
    assert document.status_code == 200, document.text
    config = schemathesis.Config.from_dict({"base-url": gateway})
    schema = schemathesis.openapi.from_dict(openapi_30(document.json()), config=config)
    found = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the document does not describe an operation: {result}"
        found.append(result.ok())
    return [op for op in found if (op.method.upper(), op.path) not in EXCLUDED]


def one_line(failure: Failure) -> str:
    return f"{failure.title}: {' '.join(failure.message.split())[:360]}"


def fuzz(
    operation: Any, mode: GenerationMode, statuses: Counter[int], path: dict[str, str]
) -> list[str]:
    """Up to :data:`EXAMPLES` generated requests to ``operation`` (with the ``path``
    parameters given); every distinct failure of :data:`CHECKS` (all of them, not the first:
    no shrinking)."""
    failures: dict[str, str] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(operation.as_strategy(generation_mode=mode, path_parameters=path or None))
    def run(case: Any) -> None:
        response = case.call(timeout=30)
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            for failure in group.exceptions:
                failures.setdefault(failure.title, one_line(failure))
        except Failure as failure:
            failures.setdefault(failure.title, one_line(failure))

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (an operation without parameters or body)
        assert mode is GenerationMode.NEGATIVE
    where = f"{operation.label} {path or ''} ({mode.value})".replace("  ", " ")
    return [f"{where}: {text}" for text in failures.values()]


def test_the_documented_api_holds_up_to_generated_requests(
    operations: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(operations) > 15  # the gateway's routes and BentoML's are all documented
    problems: list[str] = []
    for operation in operations:
        statuses: Counter[int] = Counter()
        # path parameters as generated (no such model), and naming the served model
        served = {k: v for k, v in SERVED.items() if f"{{{k}}}" in operation.path}
        for path in [{}, served] if served else [{}]:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                problems += fuzz(operation, mode, statuses, path)
        with capsys.disabled():
            print(f"\n[schemathesis] {operation.label}: {dict(sorted(statuses.items()))}", end="")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)
