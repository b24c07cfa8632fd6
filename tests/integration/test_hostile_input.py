"""Hostile input against a real ``bentoml serve``, for both demo pipelines: every request of the
corpus :mod:`tests.hostile` generates from the pipeline's own schema — business JSON (one object
and bulk), OIP REST (JSON and binary tensors) and OIP gRPC — is refused with a 4xx (gRPC: a
client-error code) that names what is wrong; none gets a 5xx, INTERNAL or UNKNOWN; the odd but
valid requests are answered; and no worker (nor gRPC front) was restarted on the way.

Framing the HTTP client would not write (lying lengths, broken chunks) goes over raw sockets:
refused with a 4xx, or the connection closed. A request that announces more than it sends can
only be ended by the server's read timeout (``GATEWAY_REQUEST_TIMEOUT_S``, short here).

Each gateway runs one worker: loans with the native gRPC front (``gateway-grpc``), reviews with
grpc.aio, so both gRPC servers meet the corpus. Each test prints its corpus size and status
histogram; every problem is listed in ``problems-*.txt`` beside the server's log.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import psutil  # type: ignore[import-untyped]
import pytest

from gateway.settings import GatewaySettings
from tests.conftest import FAST_LOANS, TINY_REVIEWS, train_ok
from tests.helpers import free_port, metric_samples, serve_gateway, wait_until
from tests.hostile import Corpus, GrpcCase, HttpCase, RawCase, corpora
from trainers import pipelines

PIPELINES = {"loans": (FAST_LOANS, "auto"), "reviews": (TINY_REVIEWS, "python")}
"""Training params and gRPC server of each pipeline's gateway (one worker each: the native
front for loans, grpc.aio for reviews)."""
HTTP_PROTOCOLS = ["business single", "business bulk", "OIP REST JSON", "OIP REST binary"]
REQUEST_TIMEOUT_S = 2.0
"""The data plane's read timeout in these servers: how long a stalled request may hold on."""
STALL_WAIT_S = REQUEST_TIMEOUT_S + 4
"""How long the client waits for the server to end a stalled request."""
CLIENT_ERRORS = frozenset(
    {"INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "UNIMPLEMENTED", "FAILED_PRECONDITION"}
)
GRPC_LISTENING = "gRPC (Open Inference Protocol v2) listening on"
SHOWN = 40
"""Failures listed in an assertion message (the rest are counted)."""


@dataclass
class Served:
    pipeline: str
    base: str
    data: str
    grpc: str
    log: Path
    tree: set[tuple[int, str]]
    corpora: dict[str, Corpus]


def processes(base: str) -> set[tuple[int, str]]:
    """``bentoml serve`` on ``base``'s port and every process under it (workers, gRPC fronts),
    as ``(pid, name)``: a restarted one comes back with another pid."""
    port = str(urlsplit(base).port)
    for child in psutil.Process(os.getpid()).children():
        if "serve" in child.cmdline() and port in child.cmdline():
            return {(p.pid, p.name()) for p in [child, *child.children(recursive=True)]}
    raise AssertionError(f"no bentoml serve on port {port} under this process")


@pytest.fixture(scope="module", params=list(PIPELINES))
def served(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    loans_data: Path,
    reviews_data: Path,
) -> Iterator[Served]:
    pipeline: str = request.param
    params, grpc_server = PIPELINES[pipeline]
    tmp = tmp_path_factory.mktemp(f"hostile-{pipeline}")
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    data = loans_data if pipeline == "loans" else reviews_data
    train_ok(store, pipeline, "--data", str(data), *params)
    grpc_port = free_port()
    settings = {
        "pipeline": pipeline,
        "grpc_port": str(grpc_port),
        "grpc_server": grpc_server,
        "poll_interval_s": "0",
        "request_timeout_s": str(REQUEST_TIMEOUT_S),
        "state_dir": str(tmp / "state"),
    }
    defaults = GatewaySettings.model_fields
    max_bulk, max_body = defaults["max_bulk"].default, defaults["max_body_bytes"].default
    with serve_gateway(store, tmp, workers=1, settings=settings) as (base, plane):
        log = tmp / "bentoml.log"

        def grpc_listens() -> bool:
            return GRPC_LISTENING in log.read_text(errors="replace")

        wait_until(grpc_listens, 60, "the gRPC server")
        yield Served(
            pipeline,
            base,
            plane,
            f"127.0.0.1:{grpc_port}",
            log,
            processes(base),
            corpora(pipeline, max_bulk, max_body),
        )


def tracebacks(log: Path) -> list[str]:
    """The server log's tracebacks, each cut to its last frames and the error."""
    text = log.read_text(errors="replace")
    found = re.findall(r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*.*", text)
    return ["\n".join(trace.splitlines()[-5:]) for trace in found]


def show(
    served: Served,
    protocol: str,
    size: int,
    statuses: Counter[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    histogram = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
    with capsys.disabled():
        print(f"\n[hostile] {served.pipeline} / {protocol}: {size} requests -> {histogram}")


def still_serving(served: Served, failures: list[str], seen_tracebacks: int) -> None:
    """No worker or gRPC front was restarted, and nothing was logged as a crash."""
    now = processes(served.base)
    if now != served.tree:
        failures.append(
            f"processes changed: {sorted(served.tree - now)} -> {sorted(now - served.tree)}"
        )
    for trace in tracebacks(served.log)[seen_tracebacks:]:
        failures.append(f"server traceback:\n{trace}")


def verdict(failures: list[str], served: Served, what: str) -> None:
    """Fail with the first problems; all of them are written beside the server log."""
    if not failures:
        return
    listing = served.log.parent / f"problems-{re.sub(r'[^a-z]+', '-', what.lower())}.txt"
    listing.write_text("\n".join(failures) + "\n")
    shown = "\n".join(failures[:SHOWN])
    more = (
        f"\n... and {len(failures) - SHOWN} more, all in {listing}" if len(failures) > SHOWN else ""
    )
    raise AssertionError(f"{len(failures)} problems:\n{shown}{more}")


# -- HTTP ----------------------------------------------------------------------------------------
def send(client: httpx.Client, case: HttpCase) -> httpx.Response:
    """``case`` sent; once more on a new connection if the server had closed the one reused
    (after a 5xx, which is counted where it happened)."""
    for attempt in (1, 2):
        content: bytes | Iterator[bytes] = case.body
        if case.chunked:
            content = iter([case.body[i : i + 65536] for i in range(0, len(case.body), 65536)])
        try:
            return client.post(case.path, content=content, headers=case.headers)
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def judged(case: HttpCase, response: httpx.Response) -> str | None:
    """What is wrong with ``response`` as the answer to ``case``; None when nothing is."""
    status = response.status_code
    if status not in case.statuses:
        expected = sorted(case.statuses)
        return f"{case.label}: status {status}, expected {expected}: {response.text[:300]!r}"
    if status == 200:
        return None
    if not response.headers.get("content-type", "").startswith("application/json"):
        return f"{case.label}: not a JSON refusal: {response.text[:300]!r}"
    text = response.text.lower()
    missing = [m for m in case.mentions if m.lower() not in text]
    if missing:
        return f"{case.label}: the refusal does not name {missing}: {response.text[:300]!r}"
    return None


@pytest.mark.parametrize("protocol", HTTP_PROTOCOLS)
def test_hostile_http_requests_are_refused_by_name(
    served: Served, protocol: str, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = served.corpora[protocol]
    seen = len(tracebacks(served.log))
    failures: list[str] = []
    statuses: Counter[str] = Counter()
    with httpx.Client(base_url=served.data, timeout=30) as client:
        for case in corpus.http:
            try:
                response = send(client, case)
            except httpx.HTTPError as exc:
                statuses["no answer"] += 1
                failures.append(f"{case.label}: no answer ({exc!r})")
                continue
            statuses[str(response.status_code)] += 1
            if (problem := judged(case, response)) is not None:
                failures.append(problem)
        framing = [raw for raw in corpus.raw if not raw.stalls]
        for raw in framing:  # answered at once: the stalls have a test of their own
            outcome = raw_outcome(served.data, raw, REQUEST_TIMEOUT_S)
            statuses[f"framing {outcome}"] += 1
            if not refused_or_closed(outcome):
                failures.append(f"{raw.label}: {outcome}")
        for case in corpus.valid_http:  # and it still answers, odd-but-valid requests included
            response = send(client, case)
            if (problem := judged(case, response)) is not None:
                failures.append(f"valid request refused: {problem}")
    show(served, protocol, len(corpus.http) + len(framing), statuses, capsys)
    still_serving(served, failures, seen)
    verdict(failures, served, protocol)


# -- raw sockets ---------------------------------------------------------------------------------
def raw_outcome(base: str, case: RawCase, wait: float) -> str:
    """What the server did with ``case``'s bytes: ``answered <status>``, ``closed`` (no
    answer, connection closed) or ``silent`` (neither, within ``wait`` seconds)."""
    address = urlsplit(base)
    deadline = time.monotonic() + wait
    with socket.create_connection((address.hostname, address.port), timeout=wait) as sock:
        try:
            sock.sendall(case.data)
        except OSError:
            return "closed"
        received = b""
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                return "closed" if not received else answer_of(received)
            if not chunk:
                return answer_of(received) if received else "closed"
            received += chunk
            if b"\r\n\r\n" in received:
                return answer_of(received)
    return answer_of(received) if received else "silent"


def answer_of(received: bytes) -> str:
    status_line = received.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ")
    return (
        f"answered {parts[1]}"
        if len(parts) > 1 and parts[1].isdigit()
        else f"answered {status_line!r}"
    )


def refused_or_closed(outcome: str) -> bool:
    return outcome == "closed" or re.fullmatch(r"answered 4\d\d", outcome) is not None


def test_requests_that_stall_are_ended_by_the_server(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """A body shorter than its Content-Length, chunks with no last chunk, headers that never
    end: the data plane answers 408/400 or closes the connection once its read timeout
    (``GATEWAY_REQUEST_TIMEOUT_S``) has passed. (BentoML's own port has no such timeout: it
    waits for as long as the client does.)"""
    stalls = [(p, case) for p in HTTP_PROTOCOLS for case in served.corpora[p].raw if case.stalls]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(stalls)) as pool:
        waiting = [pool.submit(raw_outcome, served.data, case, STALL_WAIT_S) for _, case in stalls]
        outcomes = [future.result() for future in waiting]
    took = time.monotonic() - started
    failures = [
        f"{protocol}: {case.label}: {outcome} after {STALL_WAIT_S:.0f} s"
        for (protocol, case), outcome in zip(stalls, outcomes, strict=True)
        if not refused_or_closed(outcome)
    ]
    show(served, f"stalled requests ({took:.1f} s)", len(stalls), Counter(outcomes), capsys)
    verdict(failures, served, "stalls")


# -- gRPC ----------------------------------------------------------------------------------------
def call(channel: grpc.Channel, case: GrpcCase) -> tuple[str, str]:
    try:
        channel.unary_unary(case.method)(case.request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""
    return "OK", ""


def test_hostile_grpc_calls_are_refused_by_name(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = served.corpora["OIP gRPC"]
    seen = len(tracebacks(served.log))
    failures: list[str] = []
    statuses: Counter[str] = Counter()
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(served.grpc, options=options) as channel:
        for case in corpus.grpc:
            code, details = call(channel, case)
            statuses[code] += 1
            if code not in case.codes or code not in CLIENT_ERRORS:
                failures.append(
                    f"{case.label}: {code}, expected {sorted(case.codes)}: {details[:300]!r}"
                )
                continue
            missing = [m for m in case.mentions if m.lower() not in details.lower()]
            if missing:
                failures.append(
                    f"{case.label}: the details do not name {missing}: {details[:300]!r}"
                )
        for case in corpus.valid_grpc:
            code, details = call(channel, case)
            if code != "OK":
                failures.append(f"valid call refused: {case.label}: {code} {details[:300]!r}")
    show(served, "OIP gRPC", len(corpus.grpc), statuses, capsys)
    still_serving(served, failures, seen)
    verdict(failures, served, "grpc")


# -- metrics -------------------------------------------------------------------------------------
def test_refusals_are_counted_under_the_models_own_names(served: Served) -> None:
    """After the whole corpus, ``gateway_validation_errors_total`` has a series per name the
    model defines (its fields and keys, or ``unknown``), never one per name a client made up."""
    recipe = pipelines.get(served.pipeline)
    known = {
        *recipe.Input.model_fields,
        recipe.input_key,
        f"{recipe.input_key}s",
        *("body", "inputs", "outputs", "parameters", "unknown"),
    }
    exposition = httpx.get(f"{served.base}/metrics", timeout=30).text
    series = metric_samples(exposition, "gateway_validation_errors_total")
    fields = [re.search(r'field="((?:[^"\\]|\\.)*)"', labels) for labels in series]
    values = [m.group(1) for m in fields if m is not None]
    assert values, "no refusal was counted"
    assert len(values) == len(series)
    made_up = sorted({v for v in values if not set(v.split(".")) <= known})
    assert not made_up, f"{len(made_up)} label values a client made: {made_up[:20]}"
