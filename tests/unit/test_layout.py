"""Tests import helpers and fixtures, never other tests: what two test modules share lives in a
helper module under ``tests/`` (or in a ``conftest.py``), so that running, moving or deleting one
test module never changes another."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import REPO

TESTS = REPO / "tests"


def imported_modules(path: Path, source: str) -> Iterator[tuple[int, list[str]]]:
    """``(line, dotted parts)`` of every module that the import statements of ``source`` (the code
    of the file at ``path``) load, at any depth; for ``from package import name``, also
    ``package.name`` when ``name`` is a module file there."""
    package = list(path.relative_to(REPO).parent.parts)
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            yield node.lineno, module
            for alias in node.names:
                if REPO.joinpath(*module, f"{alias.name}.py").is_file():
                    yield node.lineno, [*module, alias.name]


def imports_of_tests(path: Path, source: str) -> list[tuple[int, str]]:
    """``(line, module)`` for each import in ``source`` that names a ``test_*`` module."""
    found = {
        (line, ".".join(module))
        for line, module in imported_modules(path, source)
        if any(part.startswith("test_") for part in module)
    }
    return sorted(found)


def test_no_module_under_tests_imports_from_a_test_module() -> None:
    files = sorted(TESTS.rglob("*.py"))
    assert len(files) > 10  # the walk found the suite
    offences = [
        f"{path.relative_to(REPO)}:{line} imports from {module}"
        for path in files
        for line, module in imports_of_tests(path, path.read_text())
    ]
    assert not offences, "move what they share to a helper module or a conftest.py:\n" + "\n".join(
        offences
    )


def test_the_check_sees_absolute_relative_and_nested_imports() -> None:
    source = """
from tests.integration.test_serving import APPLICATION
import tests.integration.test_serving
from .test_serving import YOUNG
from . import test_serving
from tests.helpers import REPO
from tests import conftest
def f():
    from ..e2e.test_faults import x
"""
    path = TESTS / "integration" / "test_example.py"
    assert imports_of_tests(path, source) == [
        (2, "tests.integration.test_serving"),
        (3, "tests.integration.test_serving"),
        (4, "tests.integration.test_serving"),
        (5, "tests.integration.test_serving"),
        (9, "tests.e2e.test_faults"),
    ]
