"""The README's and the docs' examples, run as written against one real ``bentoml serve`` of the
``loans`` pipeline, so that they cannot rot.

An example is a fenced ``bash``/``sh`` or ``python`` block on the line after ``<!-- example -->``
in README.md or docs/*.md (:mod:`tests.docexamples`); one test per block, named ``file:line`` of
its marker. Mark only blocks that need nothing but the served gateway: no placeholders,
no ``make``, no controller (port 3100 is not served here, and naming it fails the example).

What differs from a user's shell, and nothing else:

- the documented ports are the test server's: each ``localhost:PORT`` / ``127.0.0.1:PORT`` in a
  block is rewritten, by text, to the port serving it here (3000 BentoML's, 3001 the data plane,
  3002 gRPC);
- the block runs in a temporary directory: ``bash -euo pipefail -c``, where ``curl`` is a
  function adding ``--fail-with-body`` (an HTTP error fails the example, body shown), or this
  virtualenv's ``python -c``, with the virtualenv's ``bin`` leading ``PATH``;
- ``GATEWAY_RELOAD_TOKEN`` is set, to the token the server was started with, as it is in the shell
  of a user who set one.

An example passes when it exits 0 within :data:`TIMEOUT_S` having printed something; when what
it printed is JSON, no answer may be an ``error``, and every answer with a prediction must name
its model version and run; a bash example that calls ``/predict`` must print such an answer.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.docexamples import (
    Example,
    ExampleError,
    answer_faults,
    collect,
    examples_in,
    json_documents,
    predicts,
)
from tests.helpers import MLFLOW_GLOBALS, REPO, VENV_BIN, free_port, serve_gateway, wait_until

TIMEOUT_S = 60
RELOAD_TOKEN = "doc-examples-reload-token"
CURL_FAILS = 'curl() { command curl --fail-with-body "$@"; }\n'
BUSINESS = re.compile(r"/predict\b")  # the business endpoints: /predict, /predict/bulk


@dataclass(frozen=True)
class Served:
    ports: dict[int, int]  # documented port → the port serving it here
    logs: Path


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "example" in metafunc.fixturenames:
        examples = collect(REPO)
        metafunc.parametrize("example", examples, ids=[e.id for e in examples])


def _port(url: str) -> int:
    port = urlparse(url).port
    assert port is not None, url
    return port


def _listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return True


@pytest.fixture(scope="module")
def served(trained: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One single-worker gateway for every example, on free ports."""
    logs = tmp_path_factory.mktemp("doc-examples")
    grpc_port = free_port()
    settings = {
        "grpc_port": str(grpc_port),
        "poll_interval_s": "0",
        "reload_token": RELOAD_TOKEN,
        "state_dir": str(logs / "state"),
    }
    with serve_gateway(trained, logs, workers=1, settings=settings) as (base, data):
        wait_until(lambda: _listening(grpc_port), 30, "the gRPC port")
        yield Served({3000: _port(base), 3001: _port(data), 3002: grpc_port}, logs)


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_GLOBALS}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["GATEWAY_RELOAD_TOKEN"] = RELOAD_TOKEN
    for name in ("no_proxy", "NO_PROXY"):  # a proxy of the machine's must not carry the calls
        env[name] = ",".join(filter(None, [env.get(name), "localhost", "127.0.0.1"]))
    return env


def _run(example: Example, served: Served, cwd: Path) -> subprocess.CompletedProcess[str]:
    source = example.bound_to(served.ports)
    if example.runner == "bash":
        args = ["bash", "-euo", "pipefail", "-c", CURL_FAILS + source]
    else:
        args = [str(VENV_BIN / "python"), "-c", source]
    try:
        return subprocess.run(
            args,
            cwd=cwd,
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        said = [_text(exc.stdout), _text(exc.stderr)]  # bytes here, whatever ``text`` said
        pytest.fail(f"{example.id}: no exit within {TIMEOUT_S} s\n" + "\n".join(said))


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def test_the_documented_example_runs_against_a_served_gateway(
    example: Example, served: Served, tmp_path: Path
) -> None:
    done = _run(example, served, tmp_path)
    said = f"{example.id} ({served.logs}):\nstdout: {done.stdout}\nstderr: {done.stderr}"
    assert done.returncode == 0, f"exit {done.returncode}, {said}"
    assert done.stdout.strip(), f"printed nothing, {said}"
    answers = json_documents(done.stdout) or []
    faults = [fault for answer in answers for fault in answer_faults(answer)]
    assert not faults, f"{faults}, {said}"
    if example.runner == "bash" and BUSINESS.search(example.source):
        assert any(predicts(a) for a in answers), f"no prediction in the answer, {said}"


def test_the_readme_calls_the_gateway_over_every_protocol() -> None:
    examples = [e for e in collect(REPO) if e.doc == "README.md"]
    sources = "".join(e.source for e in examples)
    for port in ("3000", "3001", "3002"):
        assert f"localhost:{port}" in sources, f"no README example calls :{port}"


def test_a_marked_block_of_another_language_is_refused_by_file_and_line(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("text\n\n<!-- example -->\n```json\n{}\n```\n")
    with pytest.raises(ExampleError, match=r"^doc\.md:3: example in json"):
        list(examples_in(doc, tmp_path))


def test_a_port_the_test_does_not_serve_is_refused_by_the_example() -> None:
    example = Example("docs/loop.md", 105, "bash", "curl -s localhost:3100/drift\n")
    assert example.bound_to({3100: 4100}) == "curl -s localhost:4100/drift\n"
    with pytest.raises(ExampleError, match=r"^docs/loop\.md:105: localhost:3100 is not served"):
        example.bound_to({3001: 4001})
