"""What the fault tests share: callers that keep a server busy and classify every outcome, a
tracking server that can be stopped and started again on its port, a port that answers every
connection by closing it (and counts them), and the processes of a ``bentoml serve`` found by
their command lines."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor

from gateway.store import Store
from tests.helpers import VENV_BIN, free_port, metric_samples, process, wait_until
from tests.traffic import columns, objects

ANSWERED = "answered"
REFUSED = "refused"  # the connection was refused: nothing was sent
NO_ANSWER = "no answer"  # sent, but the connection ended before any byte of an answer
CUT = "cut"  # the answer started and did not finish: what a clean stop must never do
INFER = "/inference.GRPCInferenceService/ModelInfer"
RETRY_ON_UNAVAILABLE = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "inference.GRPCInferenceService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


@dataclass(frozen=True)
class Outcome:
    at: float  # time.monotonic() when it ended
    kind: str  # ANSWERED, REFUSED, NO_ANSWER, CUT, or a refusal's HTTP status or gRPC code
    caller: int
    request_id: str = ""
    version: str = ""
    detail: str = ""


class Load:
    """``callers`` threads, each on a keep-alive connection of its own, posting one business
    object per request to ``url`` until stopped; every outcome is recorded. A caller whose
    connection is refused stops when ``until_refused``, else it pauses and goes on."""

    def __init__(
        self,
        url: str,
        callers: int = 4,
        *,
        pause_s: float = 0.0,
        until_refused: bool = False,
        population: list[dict[str, Any]] | None = None,
    ) -> None:
        self.url = url
        self.pause_s = pause_s
        self.until_refused = until_refused
        self.population = population or objects(300, 0.0, 41)[0]
        self.outcomes: list[Outcome] = []
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._call, args=(n,), daemon=True) for n in range(callers)
        ]

    def _call(self, caller: int) -> None:
        with httpx.Client(timeout=60) as client:
            i = caller
            while not self.stopping.is_set():
                body = {"application": self.population[i % len(self.population)]}
                outcome = self._post(client, caller, body)
                self.outcomes.append(outcome)
                if outcome.kind == REFUSED:
                    if self.until_refused:
                        return
                    time.sleep(0.1)
                i += 1
                if self.pause_s:
                    time.sleep(self.pause_s)

    def _post(self, client: httpx.Client, caller: int, body: dict[str, Any]) -> Outcome:
        started = False
        try:
            with client.stream("POST", self.url, json=body) as r:
                started = True  # the status line and headers arrived
                text = r.read().decode()
        except httpx.ConnectError as exc:
            return Outcome(time.monotonic(), REFUSED, caller, detail=repr(exc))
        except httpx.HTTPError as exc:
            kind = CUT if started else NO_ANSWER
            return Outcome(time.monotonic(), kind, caller, detail=repr(exc))
        if r.status_code != 200:
            return Outcome(time.monotonic(), str(r.status_code), caller, detail=text[:300])
        try:
            answer = json.loads(text)
        except ValueError:
            return Outcome(time.monotonic(), CUT, caller, detail=text[-200:])
        rid, version = answer["request_id"], answer["model_version"]
        return Outcome(time.monotonic(), ANSWERED, caller, rid, version)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(90)

    # -- what happened ------------------------------------------------------------------------
    def answered(self, since: float = 0.0) -> list[Outcome]:
        return [o for o in list(self.outcomes) if o.kind == ANSWERED and o.at >= since]

    def failures(self, since: float = 0.0) -> list[Outcome]:
        return [o for o in list(self.outcomes) if o.kind != ANSWERED and o.at >= since]

    def kinds(self) -> Counter[str]:
        return Counter(o.kind for o in list(self.outcomes))

    def versions(self, last: int) -> set[str]:
        return {o.version for o in self.answered()[-last:]}

    def wait_for(self, more: int, timeout: float = 60, what: str = "answers") -> None:
        """Until ``more`` answers beyond those counted now have arrived."""
        target = len(self.answered()) + more
        wait_until(lambda: len(self.answered()) >= target, timeout, what)


def infer_request(data: str, count: int = 1, seed: int = 43) -> bytes:
    """A serialized OIP ``ModelInferRequest`` for ``count`` loans objects, its tensors built
    from the model's metadata at the data plane ``data``."""
    metadata = httpx.get(f"{data}/v2/models/loans", timeout=30).json()
    request = service_pb2.ModelInferRequest(model_name="loans")
    for name, datatype, array in columns(metadata["inputs"], objects(count, 0.0, seed)[0]):
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if datatype == "BYTES":  # each element length-prefixed, as tritonclient sends them
            request.raw_input_contents.append(serialize_byte_tensor(array).item())
        else:
            request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return bytes(request.SerializeToString())


class GrpcLoad:
    """``callers`` threads, each on a channel with a connection of its own, calling
    ``ModelInfer`` one after another until stopped; with ``retry``, the channels carry gRPC's
    standard retry policy for UNAVAILABLE (what a client that expects servers to restart
    sets)."""

    def __init__(self, target: str, request: bytes, callers: int, *, retry: bool) -> None:
        self.target = target
        self.request = request
        self.options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1 if retry else 0),
            ("grpc.use_local_subchannel_pool", 1),  # else the channels share one connection
        ]
        if retry:
            self.options.append(("grpc.service_config", RETRY_ON_UNAVAILABLE))
        self.outcomes: list[Outcome] = []
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._call, args=(n,), daemon=True) for n in range(callers)
        ]

    def _call(self, caller: int) -> None:
        with grpc.insecure_channel(self.target, options=self.options) as channel:
            infer = channel.unary_unary(INFER)
            while not self.stopping.is_set():
                try:
                    infer(self.request, timeout=30)
                    kind, detail = ANSWERED, ""
                except grpc.RpcError as exc:
                    kind, detail = exc.code().name, str(exc.details())
                self.outcomes.append(Outcome(time.monotonic(), kind, caller, detail=detail))
                if kind != ANSWERED:
                    time.sleep(0.05)

    def __enter__(self) -> GrpcLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)

    def answered(self) -> int:
        return sum(o.kind == ANSWERED for o in list(self.outcomes))

    def failures(self) -> list[Outcome]:
        return [o for o in list(self.outcomes) if o.kind != ANSWERED]

    def wait_for(self, more: int, timeout: float = 60) -> None:
        target = self.answered() + more
        wait_until(lambda: self.answered() >= target, timeout, "gRPC answers")


# -- processes ------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int] | None:
    """State and parent of ``pid`` (None: no such process)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def children(pid: int, containing: str = "") -> list[int]:
    """Living children of ``pid`` whose command line holds ``containing``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and not gone(int(entry.name)):
            stat = _stat(int(entry.name))
            if stat and stat[1] == pid and containing in command_line(int(entry.name)):
                found.append(int(entry.name))
    return sorted(found)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie not yet reaped by its parent counts as gone)."""
    stat = _stat(pid)
    return stat is None or stat[0] in ("Z", "X")


def serve_pid(base: str) -> int:
    """The ``bentoml serve`` process listening on ``base``'s port."""
    port = base.rsplit(":", 1)[1]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and re.search(
            rf"bentoml serve --port {port}\b", command_line(int(entry.name))
        ):
            return int(entry.name)
    raise AssertionError(f"no bentoml serve on port {port}")


def workers(serve: int) -> list[int]:
    """The serving workers of the ``bentoml serve`` process ``serve``."""
    return children(serve, "--worker-id")


def held_connections(pid: int, ports: set[int]) -> int:
    """Established TCP connections to one of ``ports`` whose sockets process ``pid`` holds."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    held = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = row.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                established = fields[3] == "01"
                held += established and local_port in ports and fields[9] in inodes
    return held


def prefix(request_id: str) -> str:
    """The part of a request id that names the process that answered (gateway.predlog)."""
    return request_id[13:23]


# -- stores and metrics ----------------------------------------------------------------------------
def logged(store_url: str) -> list[str]:
    """Every request id in the prediction log of the shared store at ``store_url``."""
    store = Store(store_url)
    try:
        return [str(r[0]) for r in store.db.query("SELECT request_id FROM predictions")]
    finally:
        store.close()


def joined_labels(store_url: str) -> list[tuple[str, Any]]:
    """Every label joined to a logged answer: ``(request_id, label)``."""
    store = Store(store_url)
    try:
        rows = store.db.query(
            "SELECT p.request_id, f.label FROM feedback f JOIN predictions p "
            "ON p.request_id = f.request_id"
        )
    finally:
        store.close()
    return [(str(rid), json.loads(label)) for rid, label in rows]


def total(base: str, name: str, labels: str | None = None) -> float:
    """A metric of the server at ``base``, summed over its samples (or one labelled sample)."""
    samples = metric_samples(httpx.get(f"{base}/metrics", timeout=30).text, name)
    return samples.get(labels, 0.0) if labels is not None else sum(samples.values())


# -- logs ------------------------------------------------------------------------------------------
LINE = re.compile(r"^\S+ \[(?P<level>[A-Z]+)\] \[(?P<source>[^\]]+)\] (?P<message>.*)$")


@dataclass(frozen=True)
class LogLine:
    level: str
    source: str  # e.g. entry_service:lineage_gateway:1 (a worker), cli (bentoml serve)
    message: str


def log_lines(log: Path, start: int = 0) -> list[LogLine]:
    """The lines of a ``bentoml serve`` log from byte ``start`` on; continuation lines
    (tracebacks) are kept as lines of level ``""``."""
    with log.open("rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    found = []
    for raw in text.splitlines():
        match = LINE.match(raw)
        if match:
            found.append(LogLine(match["level"], match["source"], match["message"]))
        elif raw.strip():
            found.append(LogLine("", "", raw))
    return found


# -- the tracking server ---------------------------------------------------------------------------
class TrackingServer:
    """``mlflow server`` on ``backend`` with proxied artifacts, on one port for its whole life,
    so that it can be stopped (an outage) and started again where its clients look for it."""

    def __init__(self, backend: str, artifacts: Path, logs: Path) -> None:
        self.backend, self.artifacts, self.logs = backend, artifacts, logs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.starts = 0
        self._running: contextlib.ExitStack | None = None
        self._pid = 0

    def start(self) -> None:
        self.starts += 1
        args = [
            str(VENV_BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            self.backend,
            "--artifacts-destination",
            str(self.artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--allowed-hosts",
            "*",
        ]
        stack = contextlib.ExitStack()
        log = self.logs / f"mlflow-server-{self.starts}.log"
        proc = stack.enter_context(process(args, cwd=self.logs, env={}, log=log))
        self._running, self._pid = stack, proc.pid
        try:
            wait_until(http_ok(f"{self.url}/health"), 120, "mlflow server", proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._running is not None:
            self._running.close()
            self._running = None

    def crash(self) -> None:
        """Stop it at once (kill -9 of the server and its workers), as in an outage: a stop
        with SIGTERM waits for its clients' keep-alive connections."""
        if self._running is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._pid, signal.SIGKILL)
        self.stop()

    def __enter__(self) -> TrackingServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_ok(url: str) -> Any:
    return lambda: httpx.get(url, timeout=2).status_code == 200


class ClosingPort(threading.Thread):
    """A listener on ``port`` that closes every connection it accepts at once: a tracking
    server that is down, whose callers' attempts are counted (``attempts``: when each came)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10  # a killed server's processes take a moment to exit
        while True:
            try:
                self.sock.bind(("127.0.0.1", port))
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.attempts: list[float] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.attempts.append(time.monotonic())
            conn.close()
        self.sock.close()

    def __enter__(self) -> ClosingPort:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.join(10)
