"""`make bench`: the gateway measured on this machine, in parts (``--parts``):

- servers: the `loans` pipeline served three ways under the same closed-loop load — `mlflow
  models serve` of the logged model, the plain BentoML service (`loadtests/plain_service.py`) and
  the gateway, on its data plane and through its `@bentoml.api` methods on BentoML's port — then
  the gateway's ratios to the other two;
- protocols: one gateway worker over business JSON, OIP JSON and OIP gRPC, per CPU-second, and
  locust's figures;
- monitor: the gateway with its prediction log and its loop controller (`gateway-controller`,
  drift windows) vs the gateway with neither, in requests per CPU-second of each side's
  processes; the log in SQLite or in PostgreSQL (``--store``);
- loop: an Alertmanager alert to the controller → retrain → promotion → every answer from the
  new version;
- scaleout: the shared services of a deployment of several replicas — tracking-store round
  trips through `mlflow server` on PostgreSQL vs the embedded SQLite URI, and the prediction
  log's sustained insert rate into PostgreSQL from two replicas.

Load generator: wrk (C, keep-alive, closed loop: each connection sends its next request when
the previous answer arrives). In the servers part: 64 connections, one object per request, 20 s
per server, after a 3 s warm-up. wrk runs on the same machine as the servers, so the numbers
are comparable with each other, not with another machine's.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import psycopg

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OBJECT = {
    "income": 52000.0,
    "age": 34,
    "loan_amount": 12000.0,
    "term_months": 36,
    "employment_status": "employed",
    "purpose": "car",
    "credit_history_years": 6.5,
}


@dataclass
class Service:
    """A process the bench starts and stops: its command, environment and readiness URL."""

    name: str
    args: list[str]
    env: dict[str, str]
    ready: str  # URL polled for readiness


@dataclass
class Server(Service):
    """A server the bench loads."""

    predict: str  # path for one object
    body: dict[str, object]  # one object, in this server's format
    bulk_body: dict[str, object]  # 1,000 objects
    bulk_path: str
    also: str | None = None  # another route to the same answers, measured on the same server


@dataclass
class Result:
    server: str
    workers: int
    ok_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cold_start_s: float
    bulk_objects_per_s: float


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Started:
    cold_start_s: float  # process start → ready
    pid: int


@contextmanager
def running(server: Service, log: Path, cores: set[int] | None = None) -> Iterator[Started]:
    """Start ``server`` (on ``cores`` only, where given: its processes and threads inherit
    them); yield its cold start and its pid once it is ready."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **server.env}
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            on_cores(server.args, cores),
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{server.name} exited; see {log}")
                try:
                    if httpx.get(server.ready, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() - started > 180:
                    raise RuntimeError(f"{server.name} not ready after 180 s; see {log}")
                time.sleep(0.05)
            yield Started(time.perf_counter() - started, proc.pid)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            os.killpg(proc.pid, signal.SIGCONT)  # in case it was paused
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def on_cores(args: list[str], cores: set[int] | None) -> list[str]:
    """The command ``args`` kept on ``cores`` (its processes and threads inherit them), where
    given."""
    if not cores:
        return args
    return ["taskset", "--cpu-list", ",".join(map(str, sorted(cores))), *args]


def wrk(
    url: str,
    body: dict[str, object] | list[dict[str, object]],
    seconds: int,
    connections: int,
    cores: set[int] | None = None,
    *,
    threads: int = 2,
) -> tuple[float, float, float, int]:
    """(ok req/s, p50 ms, p99 ms, errors) from a wrk run of ``threads`` threads posting
    ``body`` (a list: each in turn), on ``cores`` where given."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    lua = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
    if isinstance(body, dict):
        lua += f"wrk.body = {json.dumps(json.dumps(body))}\n"
    else:
        bodies = ", ".join(json.dumps(json.dumps(b)) for b in body)
        lua += (
            f"bodies = {{{bodies}}}\nnext_body = 0\n"
            "request = function()\n  next_body = next_body % #bodies + 1\n"
            "  return wrk.format(nil, nil, nil, bodies[next_body])\nend\n"
        )
    script.write_text(lua)
    out = subprocess.run(
        on_cores(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                str(script),
                url,
            ],
            cores,
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return wrk_figures(out)


def wrk_figures(out: str) -> tuple[float, float, float, int]:
    """(ok req/s, p50 ms, p99 ms, errors) from the output of a ``wrk --latency`` run."""
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    took = re.search(r"requests in ([\d.]+)(ms|s|m|h)", out)
    assert took is not None, out
    duration = float(took.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[took.group(2)]
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(g) for g in sock.groups()) if sock else 0

    def quantile(q: str) -> float:
        value, unit = re.search(rf"{q}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = non_2xx + socket_errors
    return (total - non_2xx) / duration, quantile("50"), quantile("99"), errors


def bulk_rate(url: str, body: dict[str, object], objects: int, repeats: int = 5) -> float:
    best = float("inf")
    with httpx.Client(timeout=120) as client:
        client.post(url, json=body).raise_for_status()
        for _ in range(repeats):
            started = time.perf_counter()
            client.post(url, json=body).raise_for_status()
            best = min(best, time.perf_counter() - started)
    return objects / best


def servers(store: str, workers: int, home: Path) -> list[Server]:
    bulk = [OBJECT] * 1000
    port = free_port()
    mlflow_server = Server(
        "mlflow models serve",
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/loans@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        {"MLFLOW_TRACKING_URI": store},
        f"http://127.0.0.1:{port}/ping",
        f"http://127.0.0.1:{port}/invocations",
        {"dataframe_records": [OBJECT]},
        {"dataframe_records": bulk},
        f"http://127.0.0.1:{port}/invocations",
    )
    port = free_port()
    plain = Server(
        "plain BentoML",
        [
            str(BIN / "bentoml"),
            "serve",
            "loadtests.plain_service:PlainLoans",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        {
            "PLAIN_MODEL_URI": "models:/loans@champion",
            "MLFLOW_TRACKING_URI": store,
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "true",
            "BENTOML_CONFIG_OPTIONS": f"services.plain_loans.workers={workers}",
        },
        f"http://127.0.0.1:{port}/readyz",
        f"http://127.0.0.1:{port}/predict",
        {"applications": [OBJECT]},
        {"applications": bulk},
        f"http://127.0.0.1:{port}/predict",
    )
    found = [mlflow_server, plain, gateway_server("gateway", store, workers, home, bulk)]
    if workers > 1:  # the same, with one device batcher fed by every worker
        found.append(
            gateway_server(
                "gateway shared device", store, workers, home, bulk, shared_device="on", api=False
            )
        )
    return found


def gateway_server(
    name: str,
    store: str,
    workers: int,
    home: Path,
    bulk: list[dict[str, object]],
    *,
    shared_device: str = "off",
    log_predictions: bool = True,
    api: bool = True,
) -> Server:
    """The gateway as configured by default (prediction log on: every answered object appended to
    the shared store, SQLite in its state directory unless ``GATEWAY_STORE_URL`` is added);
    without ``log_predictions``, no prediction log; with ``api``, its ``@bentoml.api`` methods on
    BentoML's port are measured too. The loop (drift, alerts, retrains) runs in a
    controller of its own: see ``controller_service``."""
    port, data = free_port(), free_port()
    return Server(
        name,
        [str(BIN / "bentoml"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        {
            "GATEWAY_TRACKING_URI": store,
            "GATEWAY_DATA_PORT": str(data),
            "GATEWAY_GRPC_PORT": str(free_port()),
            "GATEWAY_SHARED_DEVICE": shared_device,
            "GATEWAY_LOG_PREDICTIONS": str(log_predictions).lower(),
            "GATEWAY_STATE_DIR": str(home.parent / f"state-{name.replace(' ', '-')}-{workers}"),
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "true",
            "BENTOML_CONFIG_OPTIONS": f"services.lineage_gateway.workers={workers}",
        },
        f"http://127.0.0.1:{data}/ready",
        f"http://127.0.0.1:{data}/predict",
        {"application": OBJECT},
        {"applications": bulk},
        f"http://127.0.0.1:{data}/predict/bulk",
        also=f"http://127.0.0.1:{port}" if api else None,  # BentoML's port: @bentoml.api
    )


def controller_service(gateway: Server, name: str) -> Service:
    """The loop controller of ``gateway`` as configured by default (a drift window every 30 s):
    the same tracking store, state directory and shared store, so it reads the prediction log
    the gateway appends."""
    port = free_port()
    shared = ("GATEWAY_TRACKING_URI", "GATEWAY_STATE_DIR", "GATEWAY_STORE_URL")
    return Service(
        name,
        [str(BIN / "gateway-controller")],
        {
            **{key: value for key, value in gateway.env.items() if key in shared},
            "GATEWAY_CONTROLLER_HOST": "127.0.0.1",
            "GATEWAY_CONTROLLER_PORT": str(port),
        },
        f"http://127.0.0.1:{port}/ready",
    )


def base_url(url: str) -> str:
    """``url`` without its last path segment: a server's base from one of its endpoints."""
    return url.rsplit("/", 1)[0]


def wait_active(controller: str, timeout_s: float = 60) -> None:
    """Wait until the controller at ``controller`` holds the lease (it refuses alerts before)."""
    deadline = time.perf_counter() + timeout_s
    while not httpx.get(f"{controller}/ready", timeout=10).json().get("active"):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the controller at {controller} not active after {timeout_s} s")
        time.sleep(0.1)


PARTS = ("servers", "protocols", "monitor", "loop", "scaleout")


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the gateway against its baselines.")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, os.cpu_count() or 1])
    parser.add_argument(
        "--parts",
        nargs="*",
        choices=PARTS,
        default=list(PARTS),
        help="servers: the three servers compared; protocols: HTTP, OIP and gRPC, and locust; "
        "monitor: the gateway with its prediction log and loop controller vs with neither; "
        "loop: alert to serving; scaleout: mlflow server on PostgreSQL vs embedded SQLite, and "
        "two replicas' prediction log into PostgreSQL (for --seconds)",
    )
    parser.add_argument("--protocol-seconds", type=int, default=10)
    parser.add_argument("--protocol-rounds", type=int, default=6)
    parser.add_argument("--monitor-seconds", type=int, default=20)
    parser.add_argument("--monitor-rounds", type=int, default=8)
    parser.add_argument(
        "--monitor-aa",
        action="store_true",
        help="monitor part as an A/A run: both servers without log or controller, to show the "
        "bench's own bias and noise",
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="monitor part: the shared store the prediction log goes to (postgres: a throwaway "
        "cluster on this machine, whose CPU seconds are reported apart)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (make bench installs it with apt-get)")

    work = Path(tempfile.mkdtemp(prefix="lineage-bench-"))
    store = f"sqlite:///{work / 'mlflow.db'}"
    print(f"training loans into {store} …", flush=True)
    train(store, work)
    results: list[Result] = []
    for workers in sorted(set(args.workers)) if "servers" in args.parts else []:
        for server in servers(store, workers, work / "bentoml"):
            print(f"{server.name}, {workers} worker(s) …", flush=True)
            log = work / f"{server.name.replace(' ', '_')}-{workers}.log"
            with running(server, log) as started:
                wrk(server.predict, server.body, 3, args.connections)  # warm-up
                ok, p50, p99, errors = wrk(
                    server.predict, server.body, args.seconds, args.connections
                )
                bulk = bulk_rate(server.bulk_path, server.bulk_body, 1000)
                cold = started.cold_start_s
                results.append(Result(server.name, workers, ok, p50, p99, errors, cold, bulk))
                if server.also is not None:
                    predict = f"{server.also}/predict"
                    wrk(predict, server.body, 3, args.connections)  # warm-up
                    measured = wrk(predict, server.body, args.seconds, args.connections)
                    bulk = bulk_rate(f"{predict}/bulk", server.bulk_body, 1000)
                    name = f"{server.name} @bentoml.api"
                    results.append(Result(name, workers, *measured, cold, bulk))
    if results:
        report(results, args.connections, args.seconds)
    if "protocols" in args.parts:
        protocols(store, work, args.protocol_seconds, args.connections, args.protocol_rounds)
    if "monitor" in args.parts:
        monitor_cost(
            store,
            work,
            max(args.workers),
            args.monitor_seconds,
            args.connections,
            rounds=args.monitor_rounds,
            calibrate=args.monitor_aa,
            shared_store=args.store,
        )
    if "loop" in args.parts:
        alert_to_serving(store, work, max(args.workers))
    if "scaleout" in args.parts:
        scaleout(store, work, args.seconds)


def train(store: str, cwd: Path, *params: str) -> None:
    """Train ``loans`` into the tracking store ``store`` (with ``params``, ``K=V``)."""
    overrides = [arg for param in params for arg in ("--param", param)]
    subprocess.run(
        [str(BIN / "trainers"), "--tracking-uri", store, "train", "loans", *overrides],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid → (parent pid, CPU seconds used so far: user + system, its own and that of the
    children it has reaped — so a tree's sum keeps what its short-lived processes used, such as
    PostgreSQL's autovacuum workers)."""
    stats: dict[int, tuple[int, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used = sum(int(field) for field in fields[11:15])  # utime, stime, cutime, cstime
        stats[int(stat.parent.name)] = (int(fields[1]), used / tick)
    return stats


def tree_pids(root: int, stats: dict[int, tuple[int, float]] | None = None) -> set[int]:
    """``root`` and every process below it (workers, and children in sessions of their own such
    as the controller's drift process)."""
    stats = _proc_stats() if stats is None else stats
    below = {root}
    grew = True
    while grew:
        found = {pid for pid, (ppid, _) in stats.items() if ppid in below} - below
        below |= found
        grew = bool(found)
    return below & set(stats)


def tree_cpu_seconds(root: int, stats: dict[int, tuple[int, float]] | None = None) -> float:
    """CPU seconds used so far by ``root`` and every process below it."""
    stats = _proc_stats() if stats is None else stats
    return sum(stats[pid][1] for pid in tree_pids(root, stats))


def grpc_load(
    target: str, seconds: int, concurrency: int, cores: set[int] | None = None
) -> tuple[float, float, float, int]:
    """(ok calls/s, p50 ms, p99 ms, errors) from a ``gateway-grpc-load`` run of single loan
    applications, on ``cores`` where given."""
    from loadtests.grpc_load import run

    found = run(target, seconds, concurrency, on_cores([], cores))
    return found["ok_per_s"], found["p50_ms"], found["p99_ms"], found["errors"]


def oip_body(item: dict[str, object]) -> dict[str, object]:
    from loadtests.grpc_load import LOANS

    return {
        "inputs": [
            {"name": name, "datatype": LOANS[name][0], "shape": [1, 1], "data": [value]}
            for name, value in item.items()
        ]
    }


Load = Callable[[int], tuple[float, float, float, int]]


def protocols(store: str, work: Path, seconds: int, connections: int, rounds: int) -> None:
    """One gateway worker answering single objects over the business JSON API, OIP JSON over
    HTTP and OIP over gRPC: requests per CPU-second of the server, so the protocols compare per
    core; then locust's figures for each of its user classes.

    The server runs on one core and the load generators (wrk, gateway-grpc-load, locust) on
    another, so a client that costs more CPU takes none from the server. Each round loads the
    protocols one after the other, in turn reversed, and compares them within the round: a
    change in this machine's speed moves a round's protocols alike, where one long run of each
    would put it between them."""
    cores = sorted(os.sched_getaffinity(0))
    server_cores = {cores[0]} if len(cores) > 1 else None
    client_cores = set(cores[1:]) or None
    # The prediction log stays on (each answer is logged, whatever the protocol); no controller
    # runs, so no drift window lands in one protocol's run and not another's.
    server = gateway_server("gateway protocols", store, 1, work / "bentoml", [OBJECT])
    grpc_target = f"127.0.0.1:{server.env['GATEWAY_GRPC_PORT']}"
    data = server.predict.rsplit("/", 1)[0]
    infer = f"{data}/v2/models/loans/infer"
    business, oip_http, oip_grpc = "business JSON, HTTP", "OIP JSON, HTTP", "OIP, gRPC"
    loads: dict[str, Load] = {
        business: lambda s: wrk(server.predict, server.body, s, connections, client_cores),
        oip_http: lambda s: wrk(infer, oip_body(OBJECT), s, connections, client_cores),
        oip_grpc: lambda s: grpc_load(grpc_target, s, connections, client_cores),
    }
    where = (
        f"server on core {cores[0]}, load generators on {', '.join(map(str, cores[1:]))}"
        if server_cores
        else "server and load generators on the one core"
    )
    print(
        f"\nprotocols: 1 worker, {connections} in flight, one object per call, {rounds} rounds "
        f"of {seconds} s per protocol; {where}"
    )
    runs: dict[str, list[tuple[float, float, float, int, float]]] = {name: [] for name in loads}
    with running(server, work / "gateway-protocols.log", server_cores) as started:
        for load in loads.values():
            load(3)  # warm-up
        for i in range(rounds):
            order = list(loads) if i % 2 == 0 else list(reversed(loads))
            for name in order:
                runs[name].append(per_cpu(loads[name], seconds, started.pid))
            print(
                f"round {i + 1}  "
                + "  ".join(f"{name}: {runs[name][-1][4]:.0f}" for name in loads)
                + " req/CPU-s",
                flush=True,
            )
        figures = locust_figures(data, grpc_target, seconds, work, client_cores)
    # The same server with gRPC on grpc.aio in the worker (the fallback without gateway-grpc).
    server.env["GATEWAY_GRPC_SERVER"] = "python"
    aio = "OIP, gRPC on grpc.aio"
    with running(server, work / "gateway-protocols-grpc-aio.log", server_cores) as started:
        loads[oip_grpc](3)
        runs[aio] = [per_cpu(loads[oip_grpc], seconds, started.pid)]
    header = (
        f"{'protocol (medians over rounds)':<34}{'ok req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'cores':>7}{'req/CPU-s':>11}"
    )
    print(header)
    print("-" * len(header))
    for name, measured in runs.items():
        ok, p50, p99 = (statistics.median(m[k] for m in measured) for k in range(3))
        errors = sum(m[3] for m in measured)
        rate = statistics.median(m[4] for m in measured)
        print(
            f"{name:<34}{ok:>10.0f}{p50:>9.1f}{p99:>9.1f}{errors:>8}{ok / rate:>7.2f}{rate:>11.0f}"
        )
    for name in (oip_grpc, oip_http):
        ratios = [a[4] / b[4] for a, b in zip(runs[name], runs[business], strict=True)]
        mean, low, high = geometric_interval(ratios)
        print(
            f"{name} / {business}, req per server CPU-s (per core): {mean:.2f}x over {rounds} "
            f"rounds, 95 % interval {low:.2f}x to {high:.2f}x (rounds: {min(ratios):.2f}x to "
            f"{max(ratios):.2f}x)"
        )
    business_rate = statistics.median(m[4] for m in runs[business])
    print(f"{aio} / {business}: {runs[aio][0][4] / business_rate:.2f}x (one run)")
    print(f"\nlocust, same server, {seconds} s per user class, 64 users, one process")
    header = f"{'user class':<28}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'failures':>10}"
    print(header)
    print("-" * len(header))
    for name, (rate, p50, p99, failures) in figures.items():
        print(f"{name:<28}{rate:>10.0f}{p50:>9.0f}{p99:>9.0f}{failures:>10}")
    perf_analyzer(grpc_target, data, work)


def per_cpu(load: Load, seconds: int, root: int) -> tuple[float, float, float, int, float]:
    """``load`` for ``seconds``: (ok req/s, p50 ms, p99 ms, errors, ok requests per CPU-second
    of ``root``'s process tree)."""
    cpu = tree_cpu_seconds(root)
    ok, p50, p99, errors = load(seconds)
    cpu = tree_cpu_seconds(root) - cpu
    return ok, p50, p99, errors, ok * seconds / cpu


def locust_figures(
    data: str, grpc_target: str, seconds: int, work: Path, cores: set[int] | None = None
) -> dict[str, tuple[float, float, float, int]]:
    """(req/s, p50 ms, p99 ms, failures) of a headless locust run of each user class, on
    ``cores`` where given."""
    figures = {}
    for user in ("BusinessJsonUser", "OipHttpUser", "OipGrpcUser"):
        prefix = work / f"locust-{user}"
        command = [
            str(BIN / "locust"),
            "-f",
            "loadtests/locustfile.py",
            "--headless",
            "--users",
            "64",
            "--spawn-rate",
            "64",
            "--run-time",
            f"{seconds}s",
            "--host",
            data,
            "--grpc-host",
            grpc_target,
            "--pipeline",
            "loans",
            "--csv",
            str(prefix),
            "--only-summary",
            user,
        ]
        subprocess.run(
            on_cores(command, cores),
            cwd=REPO,
            capture_output=True,
            check=False,  # a failed request makes locust exit 1; the table shows it
        )
        with Path(f"{prefix}_stats.csv").open() as stats:
            total = next(r for r in csv.DictReader(stats) if r["Name"] == "Aggregated")
        figures[user] = (
            float(total["Requests/s"]),
            float(total["50%"]),
            float(total["99%"]),
            int(total["Failure Count"]),
        )
    return figures


def perf_analyzer(grpc_target: str, data: str, work: Path) -> None:
    """Triton's perf_analyzer against both OIP endpoints, where its binary runs on this machine.

    PyPI's ``perf-analyzer`` wheels carry a binary built for glibc 2.38; where it cannot run the
    loader's reason is printed instead of figures."""
    wheels = work / "perf-analyzer"
    fetched = subprocess.run(
        [
            str(BIN / "pip"),
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            "manylinux_2_38_x86_64",
            "perf-analyzer==2.60.0",
            "-d",
            str(wheels),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    found = list(wheels.glob("*.whl"))
    if fetched.returncode != 0 or not found:
        print(f"\nperf_analyzer: cannot fetch the wheel: {fetched.stderr.strip()[-300:]}")
        return
    shutil.unpack_archive(found[0], wheels / "unpacked", format="zip")
    binary = wheels / "unpacked" / "perf_analyzer" / "bin" / "perf_analyzer"
    binary.chmod(0o755)
    probe = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        reason = probe.stderr.strip().splitlines()[0] if probe.stderr.strip() else probe.stdout
        print(f"\nperf_analyzer cannot run on this machine: {reason}")
        return
    inputs = work / "perf-inputs.json"
    inputs.write_text(json.dumps({"data": [{k: [v] for k, v in OBJECT.items()}]}))
    for protocol, url in (("grpc", grpc_target), ("http", data.removeprefix("http://"))):
        run = subprocess.run(
            [
                str(binary),
                "-m",
                "loans",
                "-i",
                protocol,
                "-u",
                url,
                "--input-data",
                str(inputs),
                "--concurrency-range",
                "16",
                "--measurement-interval",
                "5000",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        summary = [line for line in run.stdout.splitlines() if "Concurrency:" in line]
        print(f"perf_analyzer ({protocol}): {summary or run.stderr.strip()[-300:]}")


SIDES = ("first", "second")  # the monitor part's servers: with log and controller (A/A: without)


@dataclass(frozen=True)
class Measured:
    """The monitor part's two sides and the processes their CPU seconds are read from."""

    servers: dict[str, Server]  # by side
    roots: dict[str, list[int]]  # by side: the process trees whose CPU is that side's
    controller: int | None  # the first side's controller (None in an A/A run)
    engine: int | None  # PostgreSQL's postmaster, when the log goes to PostgreSQL

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far: by each side (``first``, ``second``) and, within the first,
        by its prediction log (``log``: the workers count it), its controller (``controller``:
        the drift process apart) and its drift process (``drift``); by PostgreSQL
        (``postgres``: an external engine, in neither side)."""
        stats = _proc_stats()
        found = {
            side: sum(tree_cpu_seconds(root, stats) for root in self.roots[side]) for side in SIDES
        }
        base = base_url(self.servers["first"].predict)
        found["log"] = metric_total(base, "gateway_prediction_log_cpu_seconds_total")
        found["controller"] = found["drift"] = 0.0
        if self.controller is not None:
            drift = tree_pids_running(self.controller, b"gateway.lowprio", stats)
            found["drift"] = sum(stats[pid][1] for pid in drift)
            found["controller"] = tree_cpu_seconds(self.controller, stats) - found["drift"]
        found["postgres"] = tree_cpu_seconds(self.engine, stats) if self.engine else 0.0
        return found


def monitor_cost(
    store: str,
    work: Path,
    workers: int,
    seconds: int,
    connections: int,
    *,
    rounds: int,
    calibrate: bool = False,
    shared_store: str = "sqlite",
) -> None:
    """The gateway as configured by default (prediction log on) with its loop controller (a
    drift window every 30 s) vs the gateway with neither, in steady state, both loaded at the
    same time.

    Both servers run side by side, their workers pinned one per core alike, and the controller's
    drift process has imported Evidently and evaluated a first window (under light load, the
    other server paused) before measuring starts. Each round then loads both servers at once,
    each with its own ``wrk``, so that whatever slows this machine down slows both alike. The
    kernel shares each core between the two servers' workers, so a server's requests per second
    depend on the share it got; its requests per CPU-second do not, and at saturation throughput
    is that rate times the cores. The first side's CPU seconds are those of its serve's process
    tree (log writers included) and of its controller's (drift process included).

    With ``shared_store`` "postgres" the log goes to a throwaway PostgreSQL cluster on this
    machine: an external engine, whose CPU seconds are printed apart, outside the ratio. With
    ``calibrate`` the first server runs without log and controller too: an A/A run, whose ratio
    shows the bench's own bias and noise."""
    kind = (
        "A/A: both without log or controller"
        if calibrate
        else f"log ({shared_store}) and controller on vs off"
    )
    print(
        f"\n{kind}: {workers} worker(s) each, {connections} connections each, {rounds} rounds of "
        f"{seconds} s, both servers loaded at once"
    )
    applications: list[dict[str, object]] = [{"application": item} for item in in_distribution(500)]
    # Side by side, each needs a BentoML home of its own (its metrics directory included).
    first = "gateway monitor off A" if calibrate else "gateway"
    on = gateway_server(
        first, store, workers, work / "bentoml-on", [OBJECT], log_predictions=not calibrate
    )
    off = gateway_server(
        "gateway monitor off", store, workers, work / "bentoml-off", [OBJECT], log_predictions=False
    )
    with ExitStack() as stack:
        engine = None
        if shared_store == "postgres" and not calibrate:
            on.env["GATEWAY_STORE_URL"], engine = stack.enter_context(shared_postgres())
        roots = {
            "first": [stack.enter_context(running(on, work / "monitor-on.log")).pid],
            "second": [stack.enter_context(running(off, work / "monitor-off.log")).pid],
        }
        cores = pin_workers(roots["first"][0])
        pin_workers(roots["second"][0])
        controller, control = None, ""
        if not calibrate:
            service = controller_service(on, "controller")
            controller = stack.enter_context(running(service, work / "monitor-controller.log")).pid
            control = base_url(service.ready)
            # The controller (and the drift process it starts later, which inherits this) runs
            # on the cores of the first server's workers, which are the second's too (worker i
            # of each on core i): the loop's CPU comes out of the cores both servers share, not
            # out of the cores left to wrk, and is counted to the first.
            pin_tree(controller, cores)
            roots["first"].append(controller)
        measured = Measured({"first": on, "second": off}, roots, controller, engine)
        if control:
            warm_up(measured, control, applications)
        windows_before = drift_windows(control) if control else 0
        rates = measure_rounds(measured, applications, seconds, connections, rounds)
        windows = drift_windows(control) - windows_before if control else 0
        drift_cpu = measured.cpu()["drift"]
    ratios = [a / b for a, b in zip(rates["first"], rates["second"], strict=True)]
    mean, low, high = geometric_interval(ratios)
    counted = "" if calibrate else " (its controller's included)"
    print(
        f"{on.name} / {off.name}, req per CPU-s{counted}: {mean:.3f}x over {rounds} rounds, "
        f"95 % interval {low:.3f}x to {high:.3f}x (rounds: {min(ratios):.3f}x to "
        f"{max(ratios):.3f}x)"
    )
    if not calibrate:
        print(
            f"drift windows evaluated while measured: {windows}; the drift process used "
            f"{drift_cpu:.1f} CPU-s in all"
        )


def in_distribution(count: int) -> list[dict[str, object]]:
    """``count`` loan applications drawn like the training data: no window drifts on them."""
    from trainers.pipelines import get

    loans = get("loans")
    return [
        item.model_dump(mode="json")
        for item in loans.inputs_from_frame(loans.generate(count, 0.0, 7))
    ]


def warm_up(measured: Measured, controller: str, bodies: list[dict[str, object]]) -> None:
    """Light load on the first server, the second paused, until ``controller`` has evaluated a
    first drift window (its drift process has imported Evidently)."""
    started = time.perf_counter()
    paused = measured.roots["second"][0]
    pause(paused)
    try:
        while drift_windows(controller) < 1:
            if time.perf_counter() - started > 300:
                raise RuntimeError("the controller evaluated no window in 300 s of light load")
            wrk(measured.servers["first"].predict, bodies, 5, 4)
    finally:
        resume(paused)  # a paused server would not hear the signal that stops it
    used = measured.cpu()
    print(
        f"warm-up: first drift window after {time.perf_counter() - started:.0f} s of light "
        f"load; the controller had used {used['controller']:.1f} CPU-s, its drift process "
        f"{used['drift']:.1f}"
    )


@contextmanager
def shared_postgres() -> Iterator[tuple[str, int]]:
    """A throwaway PostgreSQL cluster on this machine with an empty database for the shared
    store: its URL and the postmaster's pid (PostgreSQL's processes are its tree)."""
    from tests.services import postgres

    with postgres() as pg:
        yield pg.create_database("predictions"), postmaster(pg.data)


def postmaster(data: Path) -> int:
    """The pid of the PostgreSQL server running on the data directory ``data``."""
    return int((data / "postmaster.pid").read_text().split()[0])


def geometric_interval(ratios: list[float]) -> tuple[float, float, float]:
    """The geometric mean of ``ratios`` and its 95 % confidence interval (Student's t on their
    logarithms)."""
    from scipy import stats  # type: ignore[import-untyped]  # with Evidently

    logs = [math.log(r) for r in ratios]
    centre = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(centre), math.nan, math.nan
    half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(centre), math.exp(centre - half), math.exp(centre + half)


def measure_rounds(
    measured: Measured,
    bodies: list[dict[str, object]],
    seconds: int,
    connections: int,
    rounds: int,
) -> dict[str, list[float]]:
    """Requests per CPU-second of each side's processes in each round, both sides loaded at
    once."""
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    totals = dict.fromkeys(measured.cpu(), 0.0)

    def load(side: str, seconds: int) -> tuple[float, float, float, int]:
        return wrk(measured.servers[side].predict, bodies, seconds, connections)

    with ThreadPoolExecutor(2) as pool:
        for i in range(rounds):
            list(pool.map(load, SIDES, (3, 3)))  # warm-up
            before = measured.cpu()
            runs = dict(zip(SIDES, pool.map(load, SIDES, (seconds, seconds)), strict=True))
            used = {key: value - before[key] for key, value in measured.cpu().items()}
            totals = {key: value + used[key] for key, value in totals.items()}
            for side in SIDES:
                ok, p50, p99, errors = runs[side]
                per_cpu = ok * seconds / used[side]
                rates[side].append(per_cpu)
                shares = side == "first" and measured.controller is not None
                print(
                    f"round {i + 1}  {measured.servers[side].name:<24}{ok:>7.0f} req/s  "
                    f"{used[side] / seconds:4.2f} cores  {per_cpu:>6.0f} req/CPU-s  "
                    f"p50 {p50:5.1f} ms  p99 {p99:6.1f} ms  errors {errors}"
                    + (f"  loop's own CPU: {loop_shares(used)}" if shares else "")
                )
            print(
                f"round {i + 1}  first / second = "
                f"{rates['first'][-1] / rates['second'][-1]:.3f}x req per CPU-s"
                + (
                    f"  (PostgreSQL: {used['postgres'] / seconds:.2f} cores, not in the ratio)"
                    if measured.engine
                    else ""
                ),
                flush=True,
            )
    if measured.controller is not None:
        own = totals["log"] + totals["controller"] + totals["drift"]
        print(
            f"the loop's own CPU on the first side: {own:.1f} of its {totals['first']:.1f} "
            f"CPU-s ({own / totals['first']:.1%}: {loop_shares(totals)})"
        )
    if measured.engine is not None:
        print(
            f"PostgreSQL, the shared store (outside the ratio): {totals['postgres']:.1f} CPU-s "
            f"while measured, {totals['postgres'] / totals['first']:.1%} of the first side's"
        )
    return rates


def loop_shares(used: dict[str, float]) -> str:
    """The loop's parts as shares of the first side's CPU seconds in ``used``."""
    first = used["first"]
    return (
        f"prediction log {used['log'] / first:.1%}, controller {used['controller'] / first:.1%}, "
        f"drift process {used['drift'] / first:.1%}"
    )


def pin_workers(root: int) -> set[int]:
    """Pin a serve's workers one per core, in order; the cores they got. Left to the scheduler,
    where two servers' workers land differs from one server to the other and lasts for the
    server's life: in runs without this, the same server beat the other by 5-20 % in every
    round, in either direction from one run to the next."""
    workers = sorted(tree_pids_running(root, b"_bentoml_impl.worker", _proc_stats()))
    cores = sorted(os.sched_getaffinity(0))
    for i, pid in enumerate(workers):
        pin_process(pid, {cores[i % len(cores)]})
    return {cores[i % len(cores)] for i in range(len(workers))}


def pin_tree(root: int, cores: set[int]) -> None:
    """Keep every process of ``root``'s tree on ``cores`` (the processes and threads they start
    later inherit them)."""
    for pid in tree_pids(root):
        pin_process(pid, cores)


def pin_process(pid: int, cores: set[int]) -> None:
    """Keep every thread of ``pid`` on ``cores`` (new ones inherit them)."""
    with suppress(FileNotFoundError):  # it ended
        for task in Path(f"/proc/{pid}/task").iterdir():
            with suppress(ProcessLookupError):
                os.sched_setaffinity(int(task.name), cores)


def tree_pids_running(root: int, command: bytes, stats: dict[int, tuple[int, float]]) -> list[int]:
    """The processes in ``root``'s tree whose command line contains ``command``."""
    found = []
    for pid in tree_pids(root, stats):
        with suppress(OSError):
            if command in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def pause(root: int) -> None:
    signal_tree(root, signal.SIGSTOP)


def resume(root: int) -> None:
    signal_tree(root, signal.SIGCONT)


def signal_tree(root: int, sig: signal.Signals) -> None:
    for pid in tree_pids(root):
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


def drift_windows(controller: str) -> int:
    """Drift windows the controller at ``controller`` has evaluated."""
    return int(metric_total(controller, "gateway_drift_windows_total{"))


def metric_total(base: str, prefix: str) -> float:
    """The sum of the samples on ``base``'s /metrics whose line starts with ``prefix``."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def alert_to_serving(store: str, work: Path, workers: int) -> None:
    """An Alertmanager alert to the loop controller → retrain on a drifted labelled snapshot →
    promotion → every answer from the gateway's new version; prints the time to promotion
    (retrain) and from there to serving."""
    from mlflow import MlflowClient

    snapshot = work / "shifted.parquet"
    subprocess.run(
        [str(BIN / "trainers"), "data", "loans", "--out", str(snapshot), "--shift", "1"],
        cwd=work,
        check=True,
        capture_output=True,
    )
    client = MlflowClient(store, store)
    before = str(client.get_model_version_by_alias("loans", "champion").version)
    server = gateway_server("gateway loop", store, workers, work / "bentoml", [OBJECT])
    controller = controller_service(server, "controller loop")
    controller.env |= {"GATEWAY_ALERT_TOKEN": "bench", "GATEWAY_RETRAIN_DATA": str(snapshot)}
    print(f"\nalert → serving, {workers} worker(s) and a controller …", flush=True)
    control = base_url(controller.ready)
    alert = {
        "groupKey": "bench",
        "alerts": [{"status": "firing", "fingerprint": "bench", "labels": {}}],
    }
    with (
        running(server, work / "gateway-loop.log"),
        running(controller, work / "controller-loop.log"),
    ):
        wait_active(control)
        started = time.perf_counter()
        headers = {"authorization": "Bearer bench"}
        httpx.post(f"{control}/alerts", json=alert, headers=headers, timeout=30).raise_for_status()
        while str(client.get_model_version_by_alias("loans", "champion").version) == before:
            ended = httpx.get(f"{control}/retrains", timeout=30).json()["retrains"]
            if any(r["result"] in {"rejected", "failed", "skipped"} for r in ended):
                sys.exit(f"the retrain did not promote: {ended}")
            if time.perf_counter() - started > 300:
                sys.exit("no promotion within 300 s")
            time.sleep(0.1)
        promoted = time.perf_counter()
        with httpx.Client(timeout=30) as http:
            while True:  # every worker: several answers in a row from the new version
                answers = [http.post(server.predict, json=server.body) for _ in range(8)]
                if all(a.json()["model_version"] != before for a in answers):
                    break
                time.sleep(0.05)
        serving = time.perf_counter()
    print(
        f"alert → promoted (retrain): {promoted - started:.1f} s; "
        f"promoted → every answer from the new version (swap): {serving - promoted:.1f} s; "
        f"total {serving - started:.1f} s"
    )


SCALEOUT_LOOKUPS = 200  # alias lookups per tracking store
SCALEOUT_RUNS = 20  # logged-run round trips per tracking store
SCALEOUT_BULK = 100  # objects per request of the replicas' load
SCALEOUT_CONNECTIONS = 8  # per replica: 800 objects in flight, under GATEWAY_MAX_QUEUE (2048)


def scaleout(store: str, work: Path, seconds: int) -> None:
    """What the shared services of a deployment of several replicas cost, on a throwaway
    PostgreSQL cluster on this machine: the tracking store's round trips through ``mlflow
    server`` (PostgreSQL backend, proxied artifacts) vs the embedded SQLite URI, the same
    pipeline trained into each; then the prediction log's insert rate into PostgreSQL from two
    replicas (``store`` is their tracking store), each loaded for ``seconds``."""
    from tests.services import PSYCOPG, mlflow_server, postgres

    print("\nscale-out: PostgreSQL and mlflow server on this machine", flush=True)
    scratch = work / "scaleout"
    (scratch / "artifacts").mkdir(parents=True)
    with postgres() as pg:
        pg.create_database("mlflow")
        backend = pg.url("mlflow", PSYCOPG)
        with mlflow_server(backend, scratch / "artifacts", scratch) as server:
            stores = {
                "mlflow server, PostgreSQL": server,
                "embedded SQLite": f"sqlite:///{scratch / 'mlflow.db'}",
            }
            trips = {}
            for name, uri in stores.items():
                train(uri, scratch, "epochs=2")
                trips[name] = store_round_trips(uri, scratch)
        report_round_trips(trips)
        log_inserts(pg.create_database("predictions"), postmaster(pg.data), store, work, seconds)


def store_round_trips(uri: str, scratch: Path) -> tuple[list[float], list[float]]:
    """Milliseconds per call of the tracking store at ``uri``: of ``SCALEOUT_LOOKUPS`` lookups
    of loans@champion (what a replica or the controller does when it follows the alias), and of
    ``SCALEOUT_RUNS`` logged runs' round trips (create a run, log 5 params and 5 metrics in one
    batch as ``trainers`` does, log a small artifact, end it; read the run and the artifact
    back)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    # The client draws a progress bar per download, and on a server reads each ended run once more
    # to print its URL: time of the terminal's, not the store's.
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    client = MlflowClient(uri, uri)
    local = None if uri.startswith("http") else (scratch / f"runs-{time.time_ns()}").as_uri()
    experiment = client.create_experiment(f"round-trips-{time.time_ns()}", local)
    artifact = scratch / "application.json"
    artifact.write_text(json.dumps(OBJECT))

    def lookup() -> None:
        client.get_model_version_by_alias("loans", "champion")

    def logged_run() -> None:
        run = client.create_run(experiment).info.run_id
        now = int(time.time() * 1000)
        client.log_batch(
            run,
            metrics=[Metric(f"metric_{i}", float(i), now, 0) for i in range(5)],
            params=[Param(f"param_{i}", str(i)) for i in range(5)],
        )
        client.log_artifact(run, str(artifact))
        client.set_terminated(run)
        client.get_run(run)
        with tempfile.TemporaryDirectory() as into:
            client.download_artifacts(run, artifact.name, into)

    return timed(lookup, SCALEOUT_LOOKUPS), timed(logged_run, SCALEOUT_RUNS)


def timed(call: Callable[[], None], repeats: int) -> list[float]:
    """Milliseconds each of ``repeats`` calls of ``call`` took, after a few untimed ones
    (connections opened, caches filled)."""
    for _ in range(3):
        call()
    took = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        took.append((time.perf_counter() - started) * 1000)
    return took


def median_p95(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), statistics.quantiles(values, n=20)[-1]


def report_round_trips(trips: dict[str, tuple[list[float], list[float]]]) -> None:
    """The tracking stores' round trips as a table, with the server's ratio to SQLite."""
    header = (
        f"{'tracking store (median / p95 ms)':<34}{f'alias lookup (x{SCALEOUT_LOOKUPS})':>24}"
        f"{f'logged run round trip (x{SCALEOUT_RUNS})':>32}"
    )
    print(header)
    print("-" * len(header))
    figures = {name: [median_p95(calls) for calls in found] for name, found in trips.items()}
    for name, ((lookup, lookup95), (run, run95)) in figures.items():
        print(f"{name:<34}{f'{lookup:.2f} / {lookup95:.2f}':>24}{f'{run:.1f} / {run95:.1f}':>32}")
    (server, local) = figures.values()
    ratios = [
        f"{s[0] / q[0]:.1f}x / {s[1] / q[1]:.1f}x" for s, q in zip(server, local, strict=True)
    ]
    print(f"{'server / SQLite':<34}{ratios[0]:>24}{ratios[1]:>32}")


def log_inserts(url: str, engine: int, store: str, work: Path, seconds: int) -> None:
    """Two replicas (``bentoml serve``, one worker each) appending to the prediction log in the
    PostgreSQL database at ``url`` (served by ``engine``'s tree), each loaded with bulk requests
    of ``SCALEOUT_BULK`` objects for ``seconds``: objects answered and rows appended per second
    (``count(*)`` on the log), and samples dropped, which a sustained rate leaves at 0."""
    import psycopg

    items = in_distribution(5 * SCALEOUT_BULK)
    bodies: list[dict[str, object]] = [
        {"applications": items[i : i + SCALEOUT_BULK]} for i in range(0, len(items), SCALEOUT_BULK)
    ]
    replicas = [
        gateway_server(f"replica {n}", store, 1, work / f"bentoml-replica-{n}", []) for n in (1, 2)
    ]
    for replica in replicas:
        replica.env["GATEWAY_STORE_URL"] = url

    def load(replica: Server, seconds: int) -> tuple[float, float, float, int]:
        return wrk(replica.bulk_path, bodies, seconds, SCALEOUT_CONNECTIONS)

    print(
        f"\nprediction log into PostgreSQL from {len(replicas)} replicas (1 worker each), "
        f"{SCALEOUT_CONNECTIONS} connections x {SCALEOUT_BULK} objects each, {seconds} s",
        flush=True,
    )
    with ExitStack() as stack, ThreadPoolExecutor(len(replicas)) as pool:
        for replica in replicas:
            stack.enter_context(running(replica, work / f"{replica.name.replace(' ', '-')}.log"))
        list(pool.map(load, replicas, [3] * len(replicas)))  # warm-up
        conn = stack.enter_context(psycopg.connect(url, autocommit=True))
        before, cpu, started = drained(conn), tree_cpu_seconds(engine), time.perf_counter()
        runs = list(pool.map(load, replicas, [seconds] * len(replicas)))
        took, cpu = time.perf_counter() - started, tree_cpu_seconds(engine) - cpu
        after = logged(conn)
        written = drained(conn)
        dropped = [
            metric_total(base_url(r.predict), "gateway_monitor_samples_dropped_total")
            for r in replicas
        ]
    header = (
        f"{'replica':<14}{'objects/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'dropped':>9}"
    )
    print(header)
    print("-" * len(header))
    for replica, (ok, p50, p99, errors), lost in zip(replicas, runs, dropped, strict=True):
        print(
            f"{replica.name:<14}{ok * SCALEOUT_BULK:>11.0f}{p50:>9.1f}{p99:>9.1f}{errors:>8}"
            f"{lost:>9.0f}"
        )
    answered = sum(ok for ok, *_ in runs) * SCALEOUT_BULK
    errors = sum(run[3] for run in runs)
    print(f"{'both':<14}{answered:>11.0f}{'':>18}{errors:>8}{sum(dropped):>9.0f}")
    print(
        f"rows appended: {(after - before) / took:.0f}/s (count(*) on predictions), "
        f"{written - after} still to write when the load stopped; PostgreSQL used "
        f"{cpu / took:.2f} cores"
    )
    print("sustained: no sample dropped" if sum(dropped) == 0 else "NOT sustained: samples dropped")


def logged(conn: psycopg.Connection[Any]) -> int:
    """Rows in the prediction log."""
    row = conn.execute("SELECT count(*) FROM predictions").fetchone()
    assert row is not None
    return int(row[0])


def drained(conn: psycopg.Connection[Any], timeout_s: float = 60) -> int:
    """Rows in the prediction log once the replicas have written what they hold (the count
    stays put for longer than a writer's flush interval)."""
    deadline = time.perf_counter() + timeout_s
    count = logged(conn)
    while time.perf_counter() < deadline:
        time.sleep(0.5)
        count, last = logged(conn), count
        if count == last:
            return count
    raise RuntimeError(f"the prediction log still grows after {timeout_s} s without load")


def report(results: list[Result], connections: int, seconds: int) -> None:
    print(f"\n{connections} connections, one object per request, {seconds} s each (wrk)\n")
    header = (
        f"{'server':<22}{'workers':>8}{'ok req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'cold s':>8}{'bulk obj/s':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.server:<22}{r.workers:>8}{r.ok_per_s:>10.0f}{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}"
            f"{r.errors:>8}{r.cold_start_s:>8.1f}{r.bulk_objects_per_s:>12.0f}"
        )
    print()
    for workers in sorted({r.workers for r in results}):
        by = {r.server: r for r in results if r.workers == workers}
        g = by["gateway"]
        print(
            f"{workers} worker(s): gateway / mlflow models serve = "
            f"{g.ok_per_s / by['mlflow models serve'].ok_per_s:.1f}x, "
            f"gateway / plain BentoML = {g.ok_per_s / by['plain BentoML'].ok_per_s:.1f}x"
        )
        if (api := by.get("gateway @bentoml.api")) is not None:
            print(
                f"{workers} worker(s): @bentoml.api on :3000 / plain BentoML = "
                f"{api.ok_per_s / by['plain BentoML'].ok_per_s:.1f}x, "
                f"data plane / @bentoml.api = {g.ok_per_s / api.ok_per_s:.1f}x"
            )
        if (shared := by.get("gateway shared device")) is not None:
            print(
                f"{workers} worker(s): shared device / per-worker device = "
                f"{shared.ok_per_s / g.ok_per_s:.2f}x"
            )


if __name__ == "__main__":
    main()
