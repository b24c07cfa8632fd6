"""`make bench`: the `loans` pipeline served three ways on this machine, in one run, under the same
closed-loop load — `mlflow models serve` of the logged model, the plain BentoML service
(`loadtests/plain_service.py`), and the gateway — then the gateway's ratios to the other two.

Load generator: wrk (C, keep-alive, closed loop: each of the 64 connections sends its next
request when the previous answer arrives), one object per request, 20 s per server, after a 3 s
warm-up. wrk runs on the same machine as the servers, so the numbers are comparable with each
other, not with another machine's.
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
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

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
class Server:
    name: str
    args: list[str]
    env: dict[str, str]
    ready: str  # path polled for readiness
    predict: str  # path for one object
    body: dict[str, object]  # one object, in this server's format
    bulk_body: dict[str, object]  # 1,000 objects
    bulk_path: str


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
def running(server: Server, log: Path, cores: set[int] | None = None) -> Iterator[Started]:
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
) -> tuple[float, float, float, int]:
    """(ok req/s, p50 ms, p99 ms, errors) from a wrk run posting ``body`` (a list: each in
    turn), on ``cores`` where given."""
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
                "-t2",
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
            gateway_server("gateway shared device", store, workers, home, bulk, shared_device="on")
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
    loop: bool = True,
) -> Server:
    """The gateway as configured by default; without ``loop``, no prediction log and no drift
    monitor."""
    port, data = free_port(), free_port()
    return Server(
        name,
        [str(BIN / "bentoml"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        {
            "GATEWAY_TRACKING_URI": store,
            "GATEWAY_DATA_PORT": str(data),
            "GATEWAY_GRPC_PORT": str(free_port()),
            "GATEWAY_SHARED_DEVICE": shared_device,
            "GATEWAY_LOG_PREDICTIONS": str(loop).lower(),
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
    )


PARTS = ("servers", "protocols", "monitor", "loop")


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
        "monitor: the gateway with its prediction log and drift monitor on vs off; "
        "loop: alert to serving",
    )
    parser.add_argument("--protocol-seconds", type=int, default=10)
    parser.add_argument("--protocol-rounds", type=int, default=6)
    parser.add_argument("--monitor-seconds", type=int, default=20)
    parser.add_argument("--monitor-rounds", type=int, default=8)
    parser.add_argument(
        "--monitor-aa",
        action="store_true",
        help="monitor part as an A/A run: both servers without log or monitor, to show the "
        "bench's own bias and noise",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (make bench installs it with apt-get)")

    work = Path(tempfile.mkdtemp(prefix="lineage-bench-"))
    store = f"sqlite:///{work / 'mlflow.db'}"
    print(f"training loans into {store} …", flush=True)
    subprocess.run(
        [str(BIN / "trainers"), "--tracking-uri", store, "train", "loans"],
        cwd=work,
        check=True,
        capture_output=True,
    )
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
        )
    if "loop" in args.parts:
        alert_to_serving(store, work, max(args.workers))


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid → (parent pid, CPU seconds used so far: user + system)."""
    stats: dict[int, tuple[int, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return stats


def tree_pids(root: int, stats: dict[int, tuple[int, float]] | None = None) -> set[int]:
    """``root`` and every process below it (the workers, and the drift process in its own
    session)."""
    stats = _proc_stats() if stats is None else stats
    below = {root}
    grew = True
    while grew:
        found = {pid for pid, (ppid, _) in stats.items() if ppid in below} - below
        below |= found
        grew = bool(found)
    return below & set(stats)


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root`` and every process below it."""
    stats = _proc_stats()
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
    server = gateway_server("gateway protocols", store, 1, work / "bentoml", [OBJECT])
    # The prediction log stays on (each answer is logged, whatever the protocol); the drift
    # monitor is off: its windows would land in one protocol's run and not another's.
    server.env["GATEWAY_DRIFT_ENABLED"] = "false"
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


def monitor_cost(
    store: str,
    work: Path,
    workers: int,
    seconds: int,
    connections: int,
    *,
    rounds: int,
    calibrate: bool = False,
) -> None:
    """The gateway as configured by default (prediction log on, a drift window every 30 s) vs
    with neither, in steady state, both loaded at the same time.

    Both servers run side by side, their workers pinned one per core alike, and the monitor's
    drift process has imported Evidently and evaluated a first window (under light load, the
    other server paused) before measuring starts. Each round then loads both servers at once,
    each with its own ``wrk``, so that whatever slows this machine down slows both alike. The
    kernel shares each core between the two servers' workers, so a server's requests per second
    depend on the share it got; its requests per CPU-second of its process tree (drift process
    and log writer included) do not, and at saturation throughput is that rate times the cores.

    With ``calibrate`` the first server runs without log and monitor too: an A/A run, whose
    ratio shows the bench's own bias and noise."""
    kind = "A/A: both without log or monitor" if calibrate else "monitor on vs off"
    print(
        f"\n{kind}: {workers} worker(s) each, {connections} connections each, {rounds} rounds of "
        f"{seconds} s, both servers loaded at once"
    )
    from trainers.pipelines import get

    loans = get("loans")
    applications = [  # in-distribution traffic: no window should drift, no alert retrain
        {"application": item.model_dump(mode="json")}
        for item in loans.inputs_from_frame(loans.generate(500, 0.0, 7))
    ]
    # Side by side, each needs a BentoML home of its own (its metrics directory included).
    first = "gateway monitor off A" if calibrate else "gateway"
    on = gateway_server(first, store, workers, work / "bentoml-on", [OBJECT], loop=not calibrate)
    off = gateway_server(
        "gateway monitor off", store, workers, work / "bentoml-off", [OBJECT], loop=False
    )
    with (
        running(on, work / "monitor-on.log") as started_on,
        running(off, work / "monitor-off.log") as started_off,
    ):
        roots = {True: started_on.pid, False: started_off.pid}
        for root in roots.values():
            pin_workers(root)
        base = on.predict.rsplit("/", 1)[0]
        warm_started = time.perf_counter()
        pause(roots[False])
        try:
            while not calibrate and drift_windows(base) < 1:  # the drift process evaluates
                if time.perf_counter() - warm_started > 300:
                    raise RuntimeError("the monitor evaluated no window in 300 s of light load")
                wrk(on.predict, applications, 5, 4)
        finally:
            resume(roots[False])  # a paused server would not hear the signal that stops it
        if not calibrate:
            print(
                f"warm-up: first drift window after {time.perf_counter() - warm_started:.0f} s "
                f"of light load; the drift process had used "
                f"{drift_process_cpu(roots[True]):.1f} CPU-s"
            )
        windows_before = drift_windows(base)
        rates = measure_rounds(
            {True: (on, roots[True]), False: (off, roots[False])},
            applications,
            seconds,
            connections,
            rounds,
        )
        windows = drift_windows(base) - windows_before
        drift_cpu = drift_process_cpu(roots[True])
    ratios = [a / b for a, b in zip(rates[True], rates[False], strict=True)]
    mean, low, high = geometric_interval(ratios)
    print(
        f"{on.name} / {off.name}, req per server CPU-s: {mean:.3f}x over {rounds} rounds, "
        f"95 % interval {low:.3f}x to {high:.3f}x (rounds: {min(ratios):.3f}x to "
        f"{max(ratios):.3f}x)"
    )
    if not calibrate:
        print(
            f"drift windows evaluated while measured: {windows}; the drift process used "
            f"{drift_cpu:.1f} CPU-s in all"
        )


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
    servers: dict[bool, tuple[Server, int]],
    bodies: list[dict[str, object]],
    seconds: int,
    connections: int,
    rounds: int,
) -> dict[bool, list[float]]:
    """Requests per CPU-second of the server's process tree in each round, monitor on (True)
    and off, both servers loaded at once; ``servers`` holds each server with its root pid."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    log_total = drift_total = cpu_total = 0.0

    def load(loop: bool, seconds: int) -> tuple[float, float, float, int]:
        return wrk(servers[loop][0].predict, bodies, seconds, connections)

    with ThreadPoolExecutor(2) as pool:
        for i in range(rounds):
            list(pool.map(load, (True, False), (3, 3)))  # warm-up
            cpu = {loop: tree_cpu_seconds(root) for loop, (_, root) in servers.items()}
            log, drift = loop_cpu_seconds(*servers[True])
            both = pool.map(load, (True, False), (seconds, seconds))
            runs = dict(zip((True, False), both, strict=True))
            cpu = {loop: tree_cpu_seconds(root) - cpu[loop] for loop, (_, root) in servers.items()}
            log_now, drift_now = loop_cpu_seconds(*servers[True])
            log, drift = log_now - log, drift_now - drift
            log_total += log
            drift_total += drift
            cpu_total += cpu[True]
            for loop in (True, False):
                ok, p50, p99, errors = runs[loop]
                per_cpu = ok * seconds / cpu[loop]
                rates[loop].append(per_cpu)
                print(
                    f"round {i + 1}  {servers[loop][0].name:<24}{ok:>7.0f} req/s  "
                    f"{cpu[loop] / seconds:4.2f} cores  {per_cpu:>6.0f} req/CPU-s  "
                    f"p50 {p50:5.1f} ms  p99 {p99:6.1f} ms  errors {errors}"
                    + (
                        f"  loop's own CPU: log {log / cpu[loop]:.1%}, "
                        f"drift {drift / cpu[loop]:.1%}"
                        if loop
                        else ""
                    )
                )
            print(
                f"round {i + 1}  first / second = "
                f"{rates[True][-1] / rates[False][-1]:.3f}x req per CPU-s",
                flush=True,
            )
    own_total = log_total + drift_total
    print(
        f"the loop's own CPU in the first server: {own_total:.1f} of its {cpu_total:.1f} "
        f"CPU-s ({own_total / cpu_total:.1%}: prediction log {log_total / cpu_total:.1%}, "
        f"drift process {drift_total / cpu_total:.1%})"
    )
    return rates


def pin_workers(root: int) -> None:
    """Pin a serve's workers one per core, in order. Left to the scheduler, where two servers'
    workers land differs from one server to the other and lasts for the server's life: in runs
    without this, the same server beat the other by 5-20 % in every round, in either direction
    from one run to the next. (The drift process, a child of a worker, starts on its core.)"""
    workers = sorted(tree_pids_running(root, b"_bentoml_impl.worker", _proc_stats()))
    cores = sorted(os.sched_getaffinity(0))
    for i, pid in enumerate(workers):
        for task in Path(f"/proc/{pid}/task").iterdir():  # every thread; new ones inherit
            with suppress(ProcessLookupError):
                os.sched_setaffinity(int(task.name), {cores[i % len(cores)]})


def loop_cpu_seconds(server: Server, root: int) -> tuple[float, float]:
    """CPU seconds the loop has spent on its own so far: the prediction log's (the gateway
    counts them) and the drift process's."""
    base = server.predict.rsplit("/", 1)[0]
    log = metric_total(base, "gateway_prediction_log_cpu_seconds_total")
    return log, drift_process_cpu(root)


def drift_process_cpu(root: int) -> float:
    """CPU seconds used so far by the monitor's drift process (``python -m gateway.lowprio``)."""
    stats = _proc_stats()
    return sum(stats[pid][1] for pid in tree_pids_running(root, b"gateway.lowprio", stats))


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


def drift_windows(base: str) -> int:
    return int(metric_total(base, "gateway_drift_windows_total{"))


def metric_total(base: str, prefix: str) -> float:
    """The sum of the samples on ``base``'s /metrics whose line starts with ``prefix``."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def alert_to_serving(store: str, work: Path, workers: int) -> None:
    """An Alertmanager alert → retrain on a drifted labelled snapshot → promotion → every answer
    from the new version; prints the time to promotion (retrain) and from there to serving."""
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
    server.env |= {"GATEWAY_ALERT_TOKEN": "bench", "GATEWAY_RETRAIN_DATA": str(snapshot)}
    print(f"\nalert → serving, {workers} worker(s) …", flush=True)
    base = server.predict.rsplit("/", 1)[0]
    alert = {
        "groupKey": "bench",
        "alerts": [{"status": "firing", "fingerprint": "bench", "labels": {}}],
    }
    with running(server, work / "gateway-loop.log"):
        started = time.perf_counter()
        headers = {"authorization": "Bearer bench"}
        httpx.post(f"{base}/alerts", json=alert, headers=headers, timeout=30).raise_for_status()
        while str(client.get_model_version_by_alias("loans", "champion").version) == before:
            ended = httpx.get(f"{base}/retrains", timeout=30).json()["retrains"]
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
        if (shared := by.get("gateway shared device")) is not None:
            print(
                f"{workers} worker(s): shared device / per-worker device = "
                f"{shared.ok_per_s / g.ok_per_s:.2f}x"
            )


if __name__ == "__main__":
    main()
