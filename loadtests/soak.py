"""`make soak`: the gateway under a long steady load, then under a burst, each with bounds that
fail the run (exit status 1).

- soak: a real ``bentoml serve`` of ``loans`` (trained into a temporary store, as ``make bench``
  does), its capacity measured first with wrk (64 connections, saturating, as in the bench),
  then headless locust (``BusinessJsonUser`` of ``loadtests/locustfile.py``, objects from the
  pipeline's own generator) at 80 % of that capacity as an arrival rate (locust's
  ``constant_throughput`` per user; enough users, but no more than the workers' queues hold a
  call of each): a short run first, then the soak. Bounds: no failure; the soak's p99 within 2x
  the short run's; each serving worker's RSS at the end within 5 % of its RSS after the short
  run; the prediction log's rows equal to the objects locust got answers for.
- burst: a second server with a small ``GATEWAY_MAX_QUEUE``, loaded by wrk at saturation, then
  by calls arriving at 3x the measured capacity for 10 s (an open loop, ``gateway-grpc-load
  -rate``: clients that do not wait for each other's answers, as a flood does), then at
  saturation again; the same over gRPC with ``gateway-grpc-load``. Bounds: the excess
  is shed with 503 and Retry-After (gRPC: RESOURCE_EXHAUSTED) and nothing else fails; accepted
  calls' p99 stays within twice the p99 at saturation plus the time to answer a full queue at
  the rate answers keep during the burst (an admitted call waits for its queue, not for the
  flood); throughput is back at 90 % of the pre-burst figure within 5 s (or, where
  other work left the server no idle core, its ok calls per CPU second are).

On a machine of few cores a Python locust cannot send the gateway's single-object capacity (it
spends about as much CPU per call as the server): where 80 % of it is more than the locust
processes can send, every other call becomes a bulk call, of the smallest size in
``BULK_SIZES`` that brings the call rate within reach, and the capacity is measured again with
that mix. The output says which mix ran, and the rate locust reached against the target.

    python -m loadtests.soak --minutes 1        # a shortened run
    python -m loadtests.soak --burst-only       # only the burst
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import re
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.bench import (
    BIN,
    REPO,
    base_url,
    gateway_server,
    metric_total,
    running,
    train,
    tree_cpu_seconds,
    wrk_figures,
)

SHARE = 0.8  # of the measured capacity: the soak's arrival rate
PACE = 2.0  # calls per second of each locust user: its period, 500 ms, is above the p99, so a
# slow answer seldom delays the next call (the rate stays an arrival rate)
LOCUST_CALLS_PER_S = 700  # most calls/s asked of one locust process (it reached ~975 unpaced
# on the 2-core machine, the server taking the rest of the cores)
BULK_SIZES = (5, 10, 20, 50, 100)  # bulk call sizes tried, in order, when single objects are
# more calls than locust can send
CONNECTIONS = 64  # wrk's connections when measuring capacity (as in `make bench`)
CAPACITY_S = 10
POOL = 2000  # generated objects the wrk calls are drawn from
P99_GROWTH = 2.0  # soak p99 / short run p99
RSS_GROWTH = 0.05  # a worker's RSS, end / start - 1
BURST_FACTOR = 3  # the burst's arrival rate, as a multiple of the measured capacity
FLOOD = 512  # connections of the HTTP burst's open loop (calls due while all are busy wait)
PROBES = 16  # wrk connections (one per thread) that time each accepted call in the burst
RECOVERY_S = 5
RECOVERY_SHARE = 0.9


@dataclass(frozen=True)
class Shape:
    """What the soak's calls carry: single objects, or with ``bulk`` > 1 every other call a bulk
    call of ``bulk`` objects."""

    bulk: int

    @property
    def bulk_share(self) -> float:
        return 0.0 if self.bulk == 1 else 0.5

    @property
    def objects_per_call(self) -> float:
        return 1 + self.bulk_share * (self.bulk - 1)

    def describe(self) -> str:
        if self.bulk == 1:
            return "single objects (POST /predict)"
        return (
            f"every other call a {self.bulk}-object bulk call ({self.objects_per_call:g} per call)"
        )

    def calls(self, pool: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """wrk's calls in this shape, (path, body), drawn in turn from ``pool``."""
        singles = [("/predict", {"application": item}) for item in pool[:200]]
        if self.bulk == 1:
            return singles
        bulks = [
            ("/predict/bulk", {"applications": pool[i : i + self.bulk]})
            for i in range(0, min(len(pool), 200 * self.bulk) - self.bulk + 1, self.bulk)
        ]
        return [call for pair in zip(singles, bulks, strict=False) for call in pair]


@dataclass(frozen=True)
class Check:
    """One bound of the run: what was measured against what it may be."""

    what: str
    measured: str
    bound: str
    ok: bool


def generated(count: int, seed: int = 11) -> list[dict[str, Any]]:
    """``count`` loan applications from the pipeline's own generator, missing fields left out."""
    from trainers.pipelines import get

    recipe = get("loans")
    frame = recipe.generate(count, 0.0, seed).drop(columns=[recipe.target])
    return [
        {str(k): v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
        for row in frame.to_dict("records")
    ]


# -- wrk ------------------------------------------------------------------------------------
# Each call drawn in turn from CALLS; with SOAK_WRK_OUT set, every response is recorded as
# "monotonic time, status, ms since its request was written, Retry-After given" (CLOCK_MONOTONIC
# is Python's time.monotonic()), written by done(). The time since the request is a call's
# latency only where each thread has one connection.
LUA = """
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long sec; long nsec; } soak_ts; int clock_gettime(int, soak_ts *); ]]
local ts = ffi.new("soak_ts")
local function now()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.sec) + tonumber(ts.nsec) * 1e-9
end
local out = os.getenv("SOAK_WRK_OUT")
local threads = {}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
CALLS = {%s}

function setup(thread) table.insert(threads, thread) end

function init(args)
  next_call, n, started, times, statuses, took, retry = 0, 0, 0, {}, {}, {}, {}
end

function request()
  next_call = next_call %% #CALLS + 1
  started = now()
  return wrk.format(nil, CALLS[next_call][1], nil, CALLS[next_call][2])
end

if out then
  function response(status, headers, body)
    local t = now()
    n = n + 1
    times[n], statuses[n], took[n] = t, status, (t - started) * 1000
    retry[n] = (headers["retry-after"] or headers["Retry-After"]) and 1 or 0
  end

  function done(summary, latency, requests)
    local f = io.open(out, "w")
    for _, thread in ipairs(threads) do
      local t, s = thread:get("times"), thread:get("statuses")
      local l, r = thread:get("took"), thread:get("retry")
      for i = 1, thread:get("n") do
        f:write(string.format("%%.4f %%d %%.3f %%d\\n", t[i], s[i], l[i], r[i]))
      end
    end
    f:close()
  end
end
"""


@dataclass(frozen=True)
class Response:
    at: float  # time.monotonic() when it arrived
    status: int
    ms: float  # since its request was written (a latency where a thread has one connection)
    retry_after: bool


@dataclass
class WrkRun:
    """A wrk process loading a server; its responses once it has ended (where recorded)."""

    proc: subprocess.Popen[str]
    script: Path
    record: Path | None

    def finish(self, timeout: float) -> tuple[str, list[Response]]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            self.stop()
        if self.proc.returncode != 0:
            raise RuntimeError(f"wrk failed: {err.strip()}")
        responses = []
        if self.record is not None:
            self.record.with_suffix(".out").write_text(out)
            for line in self.record.read_text().splitlines():
                at, status, ms, retry = line.split()
                responses.append(Response(float(at), int(status), float(ms), retry == "1"))
        return out, responses

    def stop(self) -> None:
        """End wrk if it still runs, and remove its script."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.script.unlink(missing_ok=True)


def start_wrk(
    base: str,
    calls: list[tuple[str, dict[str, Any]]],
    seconds: float,
    connections: int,
    *,
    threads: int = 2,
    record: Path | None = None,
) -> WrkRun:
    """wrk posting ``calls`` (path, body), each in turn, to ``base``; with ``record``, every
    response is recorded there."""
    bodies = ", ".join(f"{{{json.dumps(path)}, {json.dumps(json.dumps(b))}}}" for path, b in calls)
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(LUA % bodies)
    env = {key: value for key, value in os.environ.items() if key != "SOAK_WRK_OUT"}
    if record is not None:
        env["SOAK_WRK_OUT"] = str(record)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(script),
        base,
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    return WrkRun(proc, script, record)


def wrk_load(
    base: str, calls: list[tuple[str, dict[str, Any]]], seconds: float, connections: int
) -> tuple[float, float, float, int]:
    """(ok calls/s, p50 ms, p99 ms, errors) of a closed-loop wrk run, 2 threads."""
    out, _ = start_wrk(base, calls, seconds, connections).finish(seconds + 60)
    return wrk_figures(out)


def capacity(base: str, shape: Shape, pool: list[dict[str, Any]], server: int) -> float:
    """Calls per second of ``shape`` the server (``bentoml serve`` at ``server``) answers under
    wrk at ``CONNECTIONS``, after a short warm-up."""
    calls = shape.calls(pool)
    wrk_load(base, calls, 2, CONNECTIONS)
    cpu, started = tree_cpu_seconds(server), time.monotonic()
    ok, _, p99, errors = wrk_load(base, calls, CAPACITY_S, CONNECTIONS)
    cores = (tree_cpu_seconds(server) - cpu) / (time.monotonic() - started)
    print(
        f"  capacity, {shape.describe()}: {ok:,.0f} calls/s = "
        f"{ok * shape.objects_per_call:,.0f} objects/s (p99 {p99:.0f} ms, {errors} errors; "
        f"server cores {cores:.2f})",
        flush=True,
    )
    return ok


def choose_shape(
    base: str, pool: list[dict[str, Any]], server: int, processes: int, bulk: int | None
) -> tuple[Shape, float, str]:
    """The soak's shape, its capacity in calls/s, and why it was chosen: single objects where
    locust can send 80 % of their capacity, else the first of ``BULK_SIZES`` it can (``bulk``:
    that size, measured and used whatever locust can send)."""
    reach = LOCUST_CALLS_PER_S * processes
    sizes = [bulk] if bulk else [1, *BULK_SIZES]
    for size in sizes:
        shape = Shape(size)
        found = capacity(base, shape, pool, server)
        if SHARE * found <= reach:
            return shape, found, f"80 % of it is within {processes} locust process(es)' reach"
        if size == sizes[-1]:
            why = "chosen" if bulk else "the largest tried"
            return shape, found, f"{why}; 80 % of it is beyond locust's reach here"
        print(
            f"  80 % of that ({SHARE * found:,.0f} calls/s) is more than {processes} locust "
            f"process(es) can send here (~{LOCUST_CALLS_PER_S} calls/s each)",
            flush=True,
        )
    raise AssertionError("unreachable")


# -- locust ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocustRun:
    seconds: float
    calls: int
    failures: int
    answered: int  # objects in the calls that succeeded
    calls_per_s: float
    objects_per_s: float
    took: float  # seconds from the first request to the last
    p50_ms: float
    p99_ms: float
    cores: float  # locust's CPU seconds per second of the run (its start included)


def users_for(rate: float, shape: Shape, workers: int) -> int:
    """Locust users for ``rate`` calls/s: one per ``PACE`` calls/s, but no more than keeps the
    objects they can have in flight within three quarters of the workers' queues
    (``GATEWAY_MAX_QUEUE``, objects). Each user has at most one call in flight; past that, a
    server slowed down by other work on its cores would shed the soak's own calls, and the soak
    is about the steady state (the burst is about shedding). Fewer users each send faster."""
    from gateway.settings import GatewaySettings

    default = GatewaySettings.model_fields["max_queue"].default
    queue = int(os.environ.get("GATEWAY_MAX_QUEUE", default))
    most = max(1, int(0.75 * workers * queue / shape.bulk))
    return min(max(1, round(rate / PACE)), most)


def locust(
    base: str,
    shape: Shape,
    rate: float,
    seconds: int,
    *,
    users: int,
    processes: int,
    prefix: Path,
) -> LocustRun:
    """Headless locust, ``BusinessJsonUser`` in ``shape``, ``rate`` calls/s in all from
    ``users`` users for ``seconds``; users finish their call when the time is up."""
    command = [
        str(BIN / "locust"),
        "-f",
        "loadtests/locustfile.py",
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{seconds}s",
        "--stop-timeout",
        "10",
        "--host",
        base,
        "--pipeline",
        "loans",
        "--bulk-share",
        str(shape.bulk_share),
        "--bulk-size",
        str(shape.bulk),
        "--pace",
        f"{rate / users:.6f}",
        "--final-stats",
        str(prefix.with_suffix(".json")),
        "--only-summary",
        *(["--processes", str(processes)] if processes > 1 else []),
        "BusinessJsonUser",
    ]
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    with subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=seconds + 180)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # forked workers, if any are left
    took = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    prefix.with_suffix(".log").write_text(output)
    if not prefix.with_suffix(".json").exists():
        raise RuntimeError(f"locust wrote no statistics:\n{output[-3000:]}")
    return locust_figures(json.loads(prefix.with_suffix(".json").read_text()), seconds, cpu / took)


def locust_figures(stats: dict[str, Any], seconds: float, cores: float) -> LocustRun:
    """A run's figures from the statistics ``--final-stats`` wrote."""
    entries, total = stats["entries"], stats["total"]
    answered = sum((e["num_requests"] - e["num_failures"]) * objects_in(e["name"]) for e in entries)
    began = min(e["start_time"] for e in entries)
    ended = max(e["last_request_timestamp"] for e in entries)
    times = {int(ms): count for ms, count in total["response_times"].items()}
    took = max(ended - began, 1e-9)  # first request to last
    return LocustRun(
        seconds,
        total["num_requests"],
        total["num_failures"],
        answered,
        total["num_requests"] / took,
        answered / took,
        took,
        percentile(times, 0.5),
        percentile(times, 0.99),
        cores,
    )


def percentile(times: dict[int, int], q: float) -> float:
    """The ``q`` quantile of response times counted as locust counts them (rounded ms →
    requests), computed as locust computes it."""
    count = sum(times.values())
    seen = 0
    for ms in sorted(times, reverse=True):
        seen += times[ms]
        if count - seen <= int(count * q):
            return float(ms)
    return 0.0


def objects_in(name: str) -> int:
    """Objects per call of a locust statistics row: ``/predict`` 1, ``/predict/bulk (N)`` N."""
    if name.startswith("/predict/bulk ("):
        return int(name.removeprefix("/predict/bulk (").removesuffix(")"))
    if name == "/predict":
        return 1
    raise ValueError(f"unexpected locust request name {name!r}")


# -- the server's processes and its prediction log -----------------------------------------
def workers(root: int) -> list[int]:
    """The serving workers of the ``bentoml serve`` at ``root``: its children that run
    BentoML's worker module."""
    children = {
        int(pid)
        for task in Path(f"/proc/{root}/task").iterdir()
        for pid in (task / "children").read_text().split()
    }
    return sorted(
        pid
        for pid in children
        if b"_bentoml_impl.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    )


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM: the peak RSS) of ``pid`` in KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def log_rows(db: Path) -> int:
    """Rows in the prediction log (SQLite, opened read-only)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        (count,) = conn.execute("SELECT count(*) FROM predictions").fetchone()
    return int(count)


@dataclass(frozen=True)
class Logged:
    """Where the prediction log stands: its rows, and the objects the server says it answered
    (``gateway_predictions_total``)."""

    rows: int
    answered: int

    def __sub__(self, other: Logged) -> Logged:
        return Logged(self.rows - other.rows, self.answered - other.answered)


def logged(db: Path, base: str) -> Logged:
    return Logged(log_rows(db), int(metric_total(base, "gateway_predictions_total{")))


def settled(db: Path, base: str, timeout_s: float = 60) -> Logged:
    """The log once nothing happens: rows and answers unchanged over 3 s (the writers flush
    every 0.2 s)."""
    deadline = time.monotonic() + timeout_s
    found = [logged(db, base)]
    while time.monotonic() < deadline and (len(found) < 4 or len(set(found[-4:])) > 1):
        time.sleep(1.0)
        found.append(logged(db, base))
    return found[-1]


def drained(db: Path, base: str, since: Logged, timeout_s: float = 60) -> Logged:
    """The log's rows and the server's answers ``since``, once the rows have caught up with
    the answers (or have not grown for 3 s, or ``timeout_s`` has passed)."""
    deadline = time.monotonic() + timeout_s
    found = [logged(db, base) - since]
    while found[-1].rows != found[-1].answered and time.monotonic() < deadline:
        if len(found) >= 4 and len({f.rows for f in found[-4:]}) == 1:
            break
        time.sleep(1.0)
        found.append(logged(db, base) - since)
    return found[-1]


# -- the soak -------------------------------------------------------------------------------
def soak(store: str, work: Path, args: argparse.Namespace) -> list[Check]:
    server = gateway_server("gateway soak", store, args.workers, work / "bentoml-soak", [])
    base = base_url(server.predict)
    db = Path(server.env["GATEWAY_STATE_DIR"]) / "predictions.db"
    pool = generated(POOL)
    print(f"\nsoak: {args.workers} worker(s), prediction log in {db}", flush=True)
    with running(server, work / "soak-server.log") as started:
        shape, found, why = choose_shape(base, pool, started.pid, args.processes, args.bulk)
        rate = SHARE * found
        users = users_for(rate, shape, args.workers)
        print(
            f"  soak shape: {shape.describe()} ({why})\n"
            f"  target: {rate:,.0f} calls/s = {rate * shape.objects_per_call:,.0f} objects/s "
            f"(80 % of {found:,.0f} calls/s), {users} users at {rate / users:.2f} calls/s "
            f"each, {args.processes} locust process(es)",
            flush=True,
        )
        start = settled(db, base)
        print(f"  short run: {args.baseline_seconds} s at the target rate …", flush=True)
        run = functools.partial(locust, base, shape, rate, users=users, processes=args.processes)
        cpu = tree_cpu_seconds(started.pid)
        short = run(args.baseline_seconds, prefix=work / "short")
        cores = {"short run (start)": (tree_cpu_seconds(started.pid) - cpu) / short.took}
        pids = workers(started.pid)
        print(f"  soak: {args.minutes:g} min at the target rate …", flush=True)
        cpu = tree_cpu_seconds(started.pid)
        with RssSampler(pids, 60) as rss:  # its first sample: after the short run
            soaked = run(round(args.minutes * 60), prefix=work / "soak")
        cores["soak"] = (tree_cpu_seconds(started.pid) - cpu) / soaked.took
        log = drained(db, base, start)
        dropped = metric_total(base, "gateway_monitor_samples_dropped_total")
    report_runs(rate, shape, {"short run (start)": short, "soak": soaked}, cores)
    checks = [
        Check(
            "failures (short run + soak)",
            f"{short.failures + soaked.failures}",
            "0",
            short.failures + soaked.failures == 0,
        ),
        p99_check(short, soaked),
    ]
    checks += rss_checks(rss.samples)
    answered = short.answered + soaked.answered
    print(
        f"\nprediction log (short run + soak): {log.rows:,} rows; locust got answers for "
        f"{answered:,} objects; the server counted {log.answered:,} answered "
        f"(gateway_predictions_total) and {dropped:.0f} dropped from the log's buffer"
    )
    checks.append(
        Check(
            "prediction-log rows = answers locust got",
            f"{log.rows:,} = {answered:,} ({log.rows - answered:+,})",
            "equal",
            log.rows == answered,
        )
    )
    return checks


def report_runs(
    rate: float, shape: Shape, runs: dict[str, LocustRun], server_cores: dict[str, float]
) -> None:
    print(
        f"\nlocust BusinessJsonUser, {shape.describe()}, target {rate:,.0f} calls/s "
        f"= {rate * shape.objects_per_call:,.0f} objects/s\n"
    )
    header = (
        f"{'run':<20}{'seconds':>8}{'calls':>11}{'failures':>10}{'calls/s':>9}"
        f"{'of target':>11}{'objects/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'locust cores':>14}"
        f"{'server cores':>14}"
    )
    print(header)
    print("-" * len(header))
    for name, run in runs.items():
        print(
            f"{name:<20}{run.seconds:>8.0f}{run.calls:>11,}{run.failures:>10}"
            f"{run.calls_per_s:>9,.0f}{run.calls_per_s / rate:>11.0%}"
            f"{run.objects_per_s:>11,.0f}{run.p50_ms:>8.0f}{run.p99_ms:>8.0f}"
            f"{run.cores:>14.2f}{server_cores[name]:>14.2f}"
        )
    print(
        "locust cores: CPU seconds of locust (and of the processes it waited for) per second "
        "of its run, its start included; server cores: of the serve's process tree"
    )
    short = min(run.calls_per_s / rate for run in runs.values())
    if short < 0.95:
        print(
            f"NOTE: locust reached {short:.0%} of the target rate in a run: the load generator "
            "(or the shared cores), not the target, set the rate"
        )


def p99_check(short: LocustRun, soaked: LocustRun) -> Check:
    ratio = soaked.p99_ms / short.p99_ms if short.p99_ms else math.inf
    return Check(
        "p99 soak / short run",
        f"{ratio:.2f}x ({soaked.p99_ms:.0f} / {short.p99_ms:.0f} ms)",
        f"<= {P99_GROWTH:g}x",
        ratio <= P99_GROWTH,
    )


class RssSampler:
    """The RSS of ``pids`` every ``interval_s`` in a thread, from entering to leaving (both
    sampled): VmRSS and VmHWM (the peak) in KiB, None once a process has gone."""

    def __init__(self, pids: list[int], interval_s: float) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.samples: dict[int, list[tuple[int, int] | None]] = {pid: [] for pid in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def sample(self) -> None:
        for pid in self.pids:
            try:
                self.samples[pid].append(memory_kib(pid))
            except (OSError, KeyError):
                self.samples[pid].append(None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def rss_checks(samples: dict[int, list[tuple[int, int] | None]]) -> list[Check]:
    """One check per worker: its RSS at the end of the soak against its RSS after the short
    run; with the samples between."""
    print(
        "\nserving workers' RSS (VmRSS, MiB): start = after the short run (and the capacity "
        "runs), end = after the soak\n"
    )
    header = (
        f"{'worker pid':<12}{'start':>9}{'end':>9}{'change':>9}{'peak':>9}  every minute between"
    )
    print(header)
    print("-" * len(header))
    checks = []
    for pid, found in samples.items():
        first, last = found[0], found[-1]
        trend = " ".join("gone" if s is None else f"{s[0] / 1024:.0f}" for s in found[1:-1])
        if first is None or last is None:
            print(f"{pid:<12}{'gone':>9}  {trend}")
            checks.append(Check(f"worker {pid} RSS", "the worker ended", "alive", False))
            continue
        change = last[0] / first[0] - 1
        print(
            f"{pid:<12}{first[0] / 1024:>9.1f}{last[0] / 1024:>9.1f}{change:>+9.1%}"
            f"{last[1] / 1024:>9.1f}  {trend}"
        )
        checks.append(
            Check(
                f"worker {pid} RSS end / start",
                f"{change:+.1%} ({first[0] / 1024:.1f} -> {last[0] / 1024:.1f} MiB)",
                f"within {RSS_GROWTH:.0%}",
                abs(change) <= RSS_GROWTH,
            )
        )
    return checks


# -- the burst ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Burst:
    """The burst's server and load: ``steady`` connections (saturating) before and after,
    ``total`` during."""

    base: str  # the data plane
    grpc: str  # host:port of gRPC
    server: int  # pid of its ``bentoml serve``
    workers: int
    max_queue: int  # GATEWAY_MAX_QUEUE of this server
    batch: int  # GATEWAY_MAX_BATCH_SIZE
    steady: int
    capacity: float  # calls/s answered at saturation before the burst (HTTP, wrk)
    before_s: float
    burst_s: float
    after_s: float

    def limit_ms(self, answered: float, p99_before: float) -> tuple[float, float]:
        """The bound on accepted calls' p99 in the burst, and the full-queue drain time in it
        (ms): twice the p99 at saturation plus the time the workers take to answer a full queue
        and the batch they run, at ``answered`` calls/s, the rate of answers during the burst
        (refusing the excess costs CPU too, so answers come slower than at saturation: the
        bound says that an admitted call waits for the queue it joined, not for the flood)."""
        drain_ms = (self.max_queue + self.batch) * self.workers / max(answered, 1.0) * 1000
        return 2 * (p99_before + drain_ms), drain_ms

    def explain(self, limit: float, p99_before: float, drain_ms: float) -> str:
        return (
            f"bound on accepted calls' p99: 2 x (p99 before, {p99_before:.0f} ms, + "
            f"{drain_ms:.0f} ms to answer a full queue and a batch, "
            f"{self.max_queue + self.batch} objects per worker, at the burst's rate of answers) = "
            f"{limit:.0f} ms. Open loop: the burst's calls arrive at {BURST_FACTOR}x the capacity "
            f"whatever the server answers, each timed from when it was due"
        )


def burst(store: str, work: Path, args: argparse.Namespace) -> list[Check]:
    from gateway.settings import GatewaySettings

    batch = GatewaySettings.model_fields["max_batch_size"].default
    server = gateway_server("gateway burst", store, args.workers, work / "bentoml-burst", [])
    server.env["GATEWAY_MAX_QUEUE"] = str(args.burst_max_queue)
    steady = CONNECTIONS + PROBES
    print(
        f"\nburst: {args.workers} worker(s), GATEWAY_MAX_QUEUE={args.burst_max_queue} per "
        f"worker on this server; steady load {steady} connections, and for the burst calls "
        f"arriving at {BURST_FACTOR}x the capacity (an open loop)",
        flush=True,
    )
    calls = Shape(1).calls(generated(POOL, seed=12))
    with running(server, work / "burst-server.log") as started:
        base = base_url(server.predict)
        wrk_load(base, calls, 2, CONNECTIONS)  # warm-up
        capacity, _, _, _ = wrk_load(base, calls, 3, CONNECTIONS)
        plan = Burst(
            base,
            f"127.0.0.1:{server.env['GATEWAY_GRPC_PORT']}",
            started.pid,
            args.workers,
            args.burst_max_queue,
            batch,
            steady,
            capacity,
            before_s=5,
            burst_s=args.burst_seconds,
            after_s=8,
        )
        http = http_burst(plan, calls, work)
        return judge_http(plan, http) + grpc_burst(plan)


@dataclass(frozen=True)
class HttpBurst:
    steady: list[Response]  # of the steady load and the probes
    probes: list[Response]
    extra: list[Response]  # of the burst's open loop
    socket_errors: Counter[str]  # connect, read, write, timeout
    marks: list[Mark]  # 1 s into the steady load, at the burst's start and end, then each
    # second after it
    generator_cores: float  # wrk's, over the whole run


def http_burst(plan: Burst, calls: list[tuple[str, dict[str, Any]]], work: Path) -> HttpBurst:
    """Steady load (wrk, saturating) and probes (wrk, one connection per thread, so each call
    is timed) from before to after the burst; the burst's open loop in the middle."""
    length = plan.before_s + plan.burst_s + plan.after_s
    rusage = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.monotonic()
    runs = {
        "steady": start_wrk(plan.base, calls, length, CONNECTIONS, record=work / "steady.txt"),
        "probes": start_wrk(
            plan.base, calls, length, PROBES, threads=PROBES, record=work / "probes.txt"
        ),
    }
    try:
        time.sleep(1)
        marks = [Mark.now(plan)]
        time.sleep(max(0.0, began + plan.before_s - time.monotonic()))
        marks.append(Mark.now(plan))
        flood = threading.Thread(target=open_loop, args=(plan, calls, work / "extra.txt"))
        flood.start()
        time.sleep(plan.burst_s)
        marks.append(Mark.now(plan))
        for _ in range(int(plan.after_s) - 1):
            time.sleep(max(0.0, marks[2].at + len(marks) - 2 - time.monotonic()))
            marks.append(Mark.now(plan))
        found = {name: run.finish(length + 60) for name, run in runs.items()}
        flood.join()
        found["extra"] = ("", read_responses(work / "extra.txt"))
    finally:
        for run in runs.values():
            run.stop()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    generator = used.ru_utime + used.ru_stime - rusage.ru_utime - rusage.ru_stime
    return HttpBurst(
        found["steady"][1] + found["probes"][1],
        found["probes"][1],
        found["extra"][1],
        sum((socket_errors(out) for out, _ in found.values()), Counter()),
        marks,
        generator / (time.monotonic() - began),
    )


def open_loop(plan: Burst, calls: list[tuple[str, dict[str, Any]]], record: Path) -> None:
    """Calls posted at ``BURST_FACTOR`` times the capacity for the burst's length, whatever the
    server answers (``gateway-grpc-load -http``), each answer recorded in ``record``."""
    from loadtests.grpc_load import run

    bodies = "".join(json.dumps(body) + "\n" for _, body in calls).encode()
    url = plan.base + calls[0][0]
    run(
        "",
        plan.burst_s,
        0,
        rate=BURST_FACTOR * plan.capacity,
        http=url,
        bodies=bodies,
        record=record,
        connections=FLOOD,
    )


def read_responses(record: Path) -> list[Response]:
    responses = []
    for line in record.read_text().splitlines():
        at, status, ms, retry = line.split()
        responses.append(Response(float(at), int(status), float(ms), retry == "1"))
    return sorted(responses, key=lambda r: r.at)


def judge_http(plan: Burst, run: HttpBurst) -> list[Check]:
    """The HTTP burst's table and checks: pre-burst capacity from the steady load's last
    seconds before it, the burst from its open loop's first to last answer. Accepted calls are
    timed by the probes (closed loop) and by the open loop (from when each call was due)."""
    start, end = run.extra[0].at, max(r.at for r in run.extra)
    window = plan.before_s - 1  # the steady load's first second left out
    before = [r for r in run.steady if start - window <= r.at < start]
    during = [r for r in run.steady + run.extra if start <= r.at <= end]
    took = end - start
    capacity = sum(r.status == 200 for r in before) / window
    accepted = [r for r in run.probes if r.status == 200]
    p99_before = p99([r.ms for r in accepted if start - window <= r.at < start])
    p99_probes = p99([r.ms for r in accepted if start <= r.at <= end])
    p99_flood = p99([r.ms for r in run.extra if r.status == 200])
    p99_during = max(p99_probes, p99_flood)
    answered = sum(r.status == 200 for r in during) / took
    limit, drain_ms = plan.limit_ms(answered, p99_before)
    after_s = int(plan.after_s) - 1
    marks = run.marks
    recovery = Recovery(
        capacity,
        marks[1].cores_since(marks[0])[0],
        [
            sum(r.status == 200 for r in run.steady if end + k <= r.at < end + k + 1)
            for k in range(after_s)
        ],
        [b.cores_since(a) for a, b in itertools.pairwise(marks[2:])],
    )
    print(
        f"\nHTTP burst: wrk on {plan.steady} connections ({CONNECTIONS}, and {PROBES} that "
        f"time each call) throughout, and for {took:.1f} s calls arriving at "
        f"{BURST_FACTOR * plan.capacity:,.0f}/s ({BURST_FACTOR}x the capacity wrk measured, "
        f"{plan.capacity:,.0f}/s); the generators used {run.generator_cores:.2f} cores on "
        f"average\n"
    )
    after = [r for r in run.steady if end < r.at <= end + after_s]
    p99_after = p99([r.ms for r in accepted if end < r.at <= end + after_s])

    def phase(
        name: str, flight: str, seconds: float, found: list[Response], p99_ms: float
    ) -> Phase:
        ok = sum(r.status == 200 for r in found)
        shed = sum(r.status == 503 for r in found)
        return Phase(name, flight, seconds, len(found), ok, shed, p99_ms)

    print_phases(
        [
            (phase("before", f"{plan.steady}", window, before, p99_before), marks[0], marks[1]),
            (phase("burst", f"{plan.steady}+open", took, during, p99_during), marks[1], marks[2]),
            (phase("after", f"{plan.steady}", after_s, after, p99_after), marks[2], marks[-1]),
        ],
        capacity,
    )
    print(
        f"accepted calls' p99 in the burst: {p99_probes:.0f} ms (probes), {p99_flood:.0f} ms "
        f"(the open loop's, from when each was due)"
    )
    print(recovery.describe())
    print(plan.explain(limit, p99_before, drain_ms))
    statuses = Counter(r.status for r in during)
    bare = sum(r.status == 503 and not r.retry_after for r in during)
    other = sum(n for status, n in statuses.items() if status not in {200, 503})
    errors = ", ".join(f"{kind} {n}" for kind, n in run.socket_errors.items() if n) or "none"
    return [
        Check("HTTP burst: calls shed with 503", f"{statuses[503]:,}", "> 0", statuses[503] > 0),
        Check("HTTP burst: 503 without Retry-After", f"{bare:,}", "0", bare == 0),
        Check(
            "HTTP burst: other failures",
            f"{other:,} other statuses; socket errors: {errors}",
            "0",
            other == 0 and not run.socket_errors.total(),
        ),
        Check(
            "HTTP burst: p99 of accepted calls",
            f"{p99_during:.0f} ms",
            f"<= {limit:.0f} ms",
            p99_during <= limit,
        ),
        recovery.check("HTTP"),
    ]


@dataclass(frozen=True)
class Phase:
    """Calls of one phase of a burst run: all, answered (ok), shed, and accepted calls' p99."""

    name: str
    in_flight: str  # connections (HTTP) or calls in flight (gRPC); open: an open loop's
    seconds: float
    calls: int
    ok: int
    shed: int
    p99_ms: float


def print_phases(phases: list[tuple[Phase, Mark, Mark]], capacity: float) -> None:
    """The phases as a table, with the server's CPU, the machine's idle cores and the batches
    the workers ran between each phase's marks."""
    header = (
        f"{'phase':<8}{'in flight':>10}{'seconds':>9}{'calls/s':>9}{'x capacity':>12}"
        f"{'ok/s':>8}{'shed/s':>8}{'p99 ok ms':>11}{'server cores':>14}{'CPU ms/call':>13}"
        f"{'idle cores':>12}{'batches/s':>11}{'batch wait ms':>15}"
    )
    print(header)
    print("-" * len(header))
    for phase, since, until in phases:
        rate = max(phase.calls / phase.seconds, 1e-9)
        cores, idle = until.cores_since(since)
        batches, waited = until.batching_since(since)
        print(
            f"{phase.name:<8}{phase.in_flight:>10}{phase.seconds:>9.1f}{rate:>9,.0f}"
            f"{rate / capacity:>12.2f}{phase.ok / phase.seconds:>8,.0f}"
            f"{phase.shed / phase.seconds:>8,.0f}{phase.p99_ms:>11.1f}{cores:>14.2f}"
            f"{cores / rate * 1000:>13.2f}{idle:>12.2f}{batches:>11,.0f}{waited:>15.1f}"
        )


@dataclass(frozen=True)
class Mark:
    """CPU seconds used so far by a server's processes and left idle on the machine, and the
    batches the server's workers have run (with their oldest objects' waits, in seconds)."""

    at: float  # time.monotonic()
    server: float
    idle: float
    batches: float
    waited: float

    @classmethod
    def now(cls, plan: Burst) -> Mark:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        idle = (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")  # idle + iowait
        batches = metric_total(plan.base, "gateway_batch_wait_seconds_count")
        waited = metric_total(plan.base, "gateway_batch_wait_seconds_sum")
        return cls(time.monotonic(), tree_cpu_seconds(plan.server), idle, batches, waited)

    def cores_since(self, earlier: Mark) -> tuple[float, float]:
        """The server's cores and the machine's idle cores between ``earlier`` and this."""
        took = self.at - earlier.at
        return (self.server - earlier.server) / took, (self.idle - earlier.idle) / took

    def batching_since(self, earlier: Mark) -> tuple[float, float]:
        """Batches per second since ``earlier``, and their oldest objects' mean wait (ms)."""
        batches = self.batches - earlier.batches
        waited = (self.waited - earlier.waited) / batches * 1000 if batches else math.nan
        return batches / (self.at - earlier.at), waited


STARVED_IDLE = 0.1  # idle cores under which the server's CPU share was others' to take


@dataclass(frozen=True)
class Recovery:
    """Throughput in each second after the burst against before it. Where other work shares
    the machine, it can take the server's CPU and the raw figure with it: a second also counts
    as recovered when its ok calls per server CPU second are back and the machine had no idle
    core the server could have used (a server that idles, a stuck worker, still fails)."""

    capacity: float  # ok calls/s before the burst
    cores: float  # the server's, before the burst
    ok: list[float]  # ok calls in each second after it
    used: list[tuple[float, float]]  # the server's and idle cores in each second after it

    def seconds(self) -> float:
        """Seconds after the burst until a second is back to ``RECOVERY_SHARE`` of before."""
        per_cpu = self.capacity / self.cores
        for k, (ok, (cores, idle)) in enumerate(zip(self.ok, self.used, strict=True)):
            if ok >= RECOVERY_SHARE * self.capacity:
                return k + 1
            if idle < STARVED_IDLE and ok / max(cores, 1e-9) >= RECOVERY_SHARE * per_cpu:
                return k + 1
        return math.inf

    def describe(self) -> str:
        ok = ", ".join(f"{v:,.0f}" for v in self.ok)
        used = ", ".join(f"{cores:.2f}" for cores, _ in self.used)
        idle = ", ".join(f"{idle:.2f}" for _, idle in self.used)
        return (
            f"each second after the burst: ok calls {ok} (before: {self.capacity:,.0f}/s); "
            f"server cores {used} (before: {self.cores:.2f}); idle cores {idle}; back to "
            f"{RECOVERY_SHARE:.0%} in {self.seconds()} s"
        )

    def check(self, protocol: str) -> Check:
        return Check(
            f"{protocol}: seconds to recover after the burst",
            f"{self.seconds()} s",
            f"<= {RECOVERY_S} s to {RECOVERY_SHARE:.0%} of before",
            self.seconds() <= RECOVERY_S,
        )


def socket_errors(out: str) -> Counter[str]:
    """wrk's socket errors by kind (connect, read, write, timeout)."""
    found = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    kinds = ("connect", "read", "write", "timeout")
    return Counter(dict(zip(kinds, map(int, found.groups()), strict=True)) if found else {})


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    return statistics.quantiles(values, n=100)[98]


def grpc_burst(plan: Burst) -> list[Check]:
    """``gateway-grpc-load``: saturating before, calls arriving at ``BURST_FACTOR`` times that
    capacity for the burst (open loop), then saturating again in 1-second runs (its throughput
    in each second after the burst)."""
    from loadtests.grpc_load import run

    marks = [Mark.now(plan)]
    before = run(plan.grpc, plan.before_s, CONNECTIONS)
    marks.append(Mark.now(plan))
    rate = BURST_FACTOR * float(before["ok_per_s"])
    during = run(plan.grpc, plan.burst_s, 0, rate=rate)
    marks.append(Mark.now(plan))
    buckets = []
    for _ in range(RECOVERY_S):
        mark = Mark.now(plan)
        found = run(plan.grpc, 1, CONNECTIONS)
        buckets.append((float(found["ok_per_s"]), Mark.now(plan).cores_since(mark)))
    capacity = float(before["ok_per_s"])
    limit, drain_ms = plan.limit_ms(float(during["ok_per_s"]), float(before["p99_ms"]))
    codes: dict[str, int] = during["errors_by_code"]
    recovery = Recovery(
        capacity,
        marks[1].cores_since(marks[0])[0],
        [ok for ok, _ in buckets],
        [cores for _, cores in buckets],
    )
    print(
        f"\ngRPC burst (gateway-grpc-load, 4 connections): {CONNECTIONS} calls in flight, then "
        f"calls arriving at {rate:,.0f}/s ({BURST_FACTOR}x; open loop; "
        f"{during['offered_per_s']:,.0f}/s sent, {during['unsent']:,} not sent), then "
        f"{CONNECTIONS} in flight again in 1-second runs\n"
    )

    def phase(name: str, flight: str, found: dict[str, Any]) -> Phase:
        calls = found["ok"] + found["errors"]
        shed = found["errors_by_code"].get("ResourceExhausted", 0)
        return Phase(name, flight, found["seconds"], calls, found["ok"], shed, found["p99_ms"])

    print_phases(
        [
            (phase("before", f"{CONNECTIONS}", before), marks[0], marks[1]),
            (phase("burst", "open", during), marks[1], marks[2]),
        ],
        capacity,
    )
    print(f"failed calls in the burst, by code: {codes or 'none'}")
    print(recovery.describe())
    print(plan.explain(limit, float(before["p99_ms"]), drain_ms))
    return [
        Check(
            "gRPC burst: shed with RESOURCE_EXHAUSTED only",
            ", ".join(f"{code} {n:,}" for code, n in codes.items()) or "nothing failed",
            "RESOURCE_EXHAUSTED > 0, no other code",
            codes.get("ResourceExhausted", 0) > 0 and set(codes) == {"ResourceExhausted"},
        ),
        Check(
            "gRPC burst: p99 of accepted calls",
            f"{during['p99_ms']:.0f} ms",
            f"<= {limit:.0f} ms",
            during["p99_ms"] <= limit,
        ),
        recovery.check("gRPC"),
    ]


# -- the run --------------------------------------------------------------------------------
def report_checks(checks: list[Check]) -> bool:
    print()
    width = max(len(c.what) for c in checks) + 2
    measured = max(len(c.measured) for c in checks) + 2
    bound = max(len(c.bound) for c in checks) + 2
    header = f"{'check':<{width}}{'measured':<{measured}}{'bound':<{bound}}result"
    print(header)
    print("-" * len(header))
    for c in checks:
        verdict = "ok" if c.ok else "FAIL"
        print(f"{c.what:<{width}}{c.measured:<{measured}}{c.bound:<{bound}}{verdict}")
    return all(c.ok for c in checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--minutes",
        type=float,
        default=float(os.environ.get("SOAK_MINUTES", "10")),
        help="the soak's length (default $SOAK_MINUTES, else 10)",
    )
    parser.add_argument("--baseline-seconds", type=int, default=60, help="the short run's length")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--processes", type=int, default=1, help="locust processes")
    parser.add_argument(
        "--bulk", type=int, help="bulk size of every other call (1: single objects only)"
    )
    parser.add_argument("--burst-seconds", type=float, default=10)
    parser.add_argument(
        "--burst-max-queue", type=int, default=64, help="GATEWAY_MAX_QUEUE of the burst's server"
    )
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument("--burst-only", action="store_true")
    parts.add_argument("--no-burst", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lineage-soak-"))
    store = f"sqlite:///{work / 'mlflow.db'}"
    print(f"training loans into {store} …", flush=True)
    train(store, work)
    checks = [] if args.burst_only else soak(store, work, args)
    if not args.no_burst:
        checks += burst(store, work, args)
    if not report_checks(checks):
        sys.exit(f"a bound failed; logs in {work}")


if __name__ == "__main__":
    main()
