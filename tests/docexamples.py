"""The examples in the README and the docs: every fenced code block on the line after
``<!-- example -->`` is one, and a test runs it against a served gateway.

Parsing and checking live here, apart from the test that starts the server, so that what counts
as an example, and what counts as its success, can be read (and tested) without a server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "<!-- example -->"
INTERPRETERS = {"bash": "bash", "sh": "bash", "python": "python"}  # fence language → runner
ADDRESS = re.compile(r"\b(localhost|127\.0\.0\.1):(\d+)\b")
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
LINEAGE = ("model_version", "run_id")  # what every answer carrying a prediction names


class ExampleError(ValueError):
    """A marked block that cannot be run: the message starts with its ``file:line``."""


@dataclass(frozen=True)
class Example:
    """One marked block: where it is (``line`` is its marker's, 1-based), how it runs, and its
    text."""

    doc: str
    line: int
    runner: str
    source: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    def bound_to(self, ports: Mapping[int, int]) -> str:
        """The source with each documented ``localhost:PORT`` / ``127.0.0.1:PORT`` moved to the
        port that serves it here (``ports``); a port not in ``ports`` is an error."""

        def move(match: re.Match[str]) -> str:
            host, port = match.group(1), int(match.group(2))
            if port not in ports:
                raise ExampleError(
                    f"{self.id}: {match.group(0)} is not served by the test "
                    f"(served: {', '.join(map(str, sorted(ports)))})"
                )
            return f"{host}:{ports[port]}"

        return ADDRESS.sub(move, self.source)


def examples_in(path: Path, root: Path) -> Iterator[Example]:
    """The marked blocks of the Markdown file ``path``, named relative to ``root``."""
    doc = path.relative_to(root).as_posix()
    lines = path.read_text().splitlines()
    for index, text in enumerate(lines):
        if text.strip() == MARKER:
            yield _block(doc, lines, index)


def _block(doc: str, lines: list[str], marker: int) -> Example:
    """The fenced block opening on the line after the marker at ``lines[marker]`` (0-based)."""
    where, start = f"{doc}:{marker + 1}", marker + 1
    opening = FENCE.match(lines[start]) if start < len(lines) else None
    if opening is None:
        raise ExampleError(f"{where}: {MARKER} must be followed at once by a fenced code block")
    fence, language = opening.groups()
    if language not in INTERPRETERS:
        raise ExampleError(
            f"{where}: example in {language or 'a block without a language'}; "
            f"examples are {', '.join(INTERPRETERS)}"
        )
    for end in range(start + 1, len(lines)):
        closing = lines[end].strip()
        if closing.startswith(fence) and set(closing) == {fence[0]}:
            body = "\n".join(lines[start + 1 : end]) + "\n"
            return Example(doc, marker + 1, INTERPRETERS[language], body)
    raise ExampleError(f"{where}: the example's code block is never closed")


def collect(root: Path) -> list[Example]:
    """Every example of ``root``'s README.md and docs/*.md, in file and line order."""
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return [example for path in docs for example in examples_in(path, root)]


def json_documents(output: str) -> list[Any] | None:
    """The JSON values ``output`` is made of (``curl -s`` prints answers back to back, with or
    without newlines), or ``None`` when it is not only JSON."""
    decoder, documents, at = json.JSONDecoder(), [], 0
    while (at := _skip_space(output, at)) < len(output):
        try:
            document, at = decoder.raw_decode(output, at)
        except json.JSONDecodeError:
            return None
        documents.append(document)
    return documents or None


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def answer_faults(document: Any) -> list[str]:
    """What is wrong with one JSON answer an example printed: a refusal (``error``), or a
    prediction that does not name its model version and run."""
    if not isinstance(document, dict):
        return []
    if "error" in document:
        return [f"answered an error: {document['error']!r}"]
    if "prediction" in document or "predictions" in document:
        return [f"a prediction without {key!r}" for key in LINEAGE if key not in document]
    return []


def predicts(document: Any) -> bool:
    return isinstance(document, dict) and ("prediction" in document or "predictions" in document)
