"""The refusal hierarchy drawn in gateway/errors.py's docstring is the code: each drawn class
exists where drawn, under the parent drawn above it, with the HTTP status and gRPC code of its
row; every refusal class is drawn; and both transports' one mapping (``error_response``,
``refusal``) gives each class its row. The drawing cannot go stale."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest

from gateway import errors, loader
from gateway.errors import GatewayError, InvalidTensor, Overloaded
from gateway.http import error_response
from tests.corekit import grpc_server, make_core

ROW = re.compile(r"^(?P<tree>[\s│├└─]*)(?P<name>[\w.]+)\s+(?P<http>\d{3})\s+(?P<grpc>[A-Z_]+)\b")
MODULES = {"": errors, "loader.": loader}


@dataclass(frozen=True)
class Drawn:
    name: str
    depth: int
    http: int
    grpc: str
    parent: str

    @property
    def cls(self) -> type[GatewayError]:
        prefix, _, name = self.name.rpartition(".")
        found: type[GatewayError] = getattr(MODULES[prefix + "." if prefix else ""], name)
        return found


def drawing() -> list[Drawn]:
    """The rows of the docstring's table under its root (the header line: ``GatewayError``,
    then the column titles), each with the class drawn above it one level up."""
    doc = errors.__doc__ or ""
    table = doc.split(".. code-block:: text", 1)[1].split("\n\n")[1]
    header, *lines = table.splitlines()
    indent = len(header) - len(header.lstrip())
    root, *titles = header.split()
    assert (root, titles) == ("GatewayError", ["HTTP", "gRPC"]), header
    rows: list[Drawn] = []
    parents = [root]
    for line in lines:
        match = ROW.match(line)
        assert match, f"a line of the drawing that is not a row: {line!r}"
        depth = (len(match["tree"]) - indent) // 4  # each level of the tree is 4 wide
        assert 1 <= depth <= len(parents), f"a row with no parent drawn: {line!r}"
        parents[depth:] = [match["name"]]
        parent = parents[depth - 1]
        rows.append(Drawn(match["name"], depth, int(match["http"]), match["grpc"], parent))
    return rows


ROWS = drawing()


def test_the_drawing_is_read_whole() -> None:
    assert ROWS[0] == Drawn("BadRequest", 1, 400, "INVALID_ARGUMENT", "GatewayError")
    assert ROWS[-1] == Drawn("AnswerTimeout", 1, 504, "DEADLINE_EXCEEDED", "GatewayError")
    assert len(ROWS) == 17
    assert [(r.name, r.parent) for r in ROWS if r.depth == 3] == [
        ("loader.IntegrityError", "ModelUnavailable")
    ]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_each_drawn_class_has_its_rows_status_code_and_parent(row: Drawn) -> None:
    assert row.cls.status_code == row.http
    assert row.cls.grpc_code == row.grpc
    assert row.cls.__bases__ == (Drawn(row.parent, 0, 0, "", "").cls,)


def every_subclass(cls: type[GatewayError]) -> set[type[GatewayError]]:
    return {cls}.union(*(every_subclass(sub) for sub in cls.__subclasses__()))


def test_every_refusal_class_is_drawn() -> None:
    drawn = {GatewayError, *(row.cls for row in ROWS)}
    mine = {c for c in every_subclass(GatewayError) if c.__module__.startswith("gateway.")}
    assert mine - drawn == set(), "draw them in gateway/errors.py"


def instance(cls: type[GatewayError]) -> GatewayError:
    if cls is Overloaded:
        return Overloaded(10, 10, 2.0)
    if cls is InvalidTensor:
        return InvalidTensor("age", "expected a number")
    return cls("refused")


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_the_http_mapping_gives_each_class_its_status(row: Drawn) -> None:
    response = error_response(instance(row.cls))
    assert response.status_code == row.http
    assert ("retry-after" in response.headers) == (row.cls is Overloaded)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_the_grpc_mapping_gives_each_class_its_code(row: Drawn) -> None:
    grpc_mod: Any = grpc_server()
    status, refused = grpc_mod.refusal(make_core(), "ModelInfer", instance(row.cls))
    assert status == row.http
    assert refused.code == grpc_mod.grpc.StatusCode[row.grpc]
    assert refused.details == instance(row.cls).message
    assert bool(refused.header) == (row.cls is Overloaded)
