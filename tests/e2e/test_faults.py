"""Faults under load, with real processes: a client keeps calling and counts every failure while
a piece of the system is stopped or killed, and each test prints what it cost (``pytest -s``).

- the tracking server stops: serving goes on, the alias watcher says so once, backs off and
  follows the alias again when the server is back;
- a serving worker, a gRPC front, the drift process, a retrain and the loop controller are killed
  (-9): what each costs a client, and how long until it serves again;
- ``bentoml serve`` gets SIGTERM: what was in flight is answered, the rest is refused cleanly, and
  the prediction log holds every answer;
- the shared store goes down: serving goes on, the log keeps what its bound allows, counts what it
  drops, and writes nothing twice;
- many clients send predictions and feedback at once: every answer is logged once, every label is
  joined once.
"""

from __future__ import annotations

import math
import os
import re
import signal
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from threading import Thread
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from tests.conftest import FAST_LOANS, train_ok
from tests.faults import (
    ANSWERED,
    CUT,
    NO_ANSWER,
    REFUSED,
    ClosingPort,
    GrpcLoad,
    Load,
    TrackingServer,
    children,
    gone,
    held_connections,
    infer_request,
    joined_labels,
    log_lines,
    logged,
    prefix,
    serve_pid,
    total,
    workers,
)
from tests.helpers import cli, free_port, run_controller, serve_gateway, wait_until
from tests.services import PSYCOPG, Postgres, postgres
from tests.traffic import objects

FRONT = re.compile(r"/gateway-grpc, pid (\d+)\)")


@dataclass(frozen=True)
class Serving:
    """One ``bentoml serve`` (two workers) of the module's champion."""

    base: str
    data: str
    grpc: str
    log: Path
    store: str  # the shared store its prediction log writes to


@pytest.fixture(scope="module")
def serving(trained: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    """Shared by the tests that leave it serving as they found it (a killed worker or front is
    restarted by the service itself before the test ends)."""
    logs = tmp_path_factory.mktemp("faults-serving")
    grpc_port = free_port()
    settings = {"state_dir": str(logs / "state"), "grpc_port": str(grpc_port)}
    with serve_gateway(trained, logs, settings=settings) as (base, data):
        store = f"sqlite:///{logs / 'state' / 'predictions.db'}"
        yield Serving(base, data, f"127.0.0.1:{grpc_port}", logs / "bentoml.log", store)


def fresh_answer(data: str) -> dict[str, Any]:
    """An answer over a new connection (which the kernel may give to any worker)."""
    with httpx.Client(timeout=30) as client:
        r = client.post(f"{data}/predict", json={"application": objects(1, 0.0, 3)[0][0]})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


# -- many clients at once --------------------------------------------------------------------------
def test_concurrent_predictions_and_feedback_are_logged_and_joined_exactly_once(
    serving: Serving,
) -> None:
    """8 clients, each answering objects one by one and in bulk and sending the label of every
    answer back (one by one and in lists): N answers → N rows, N labels → N joined labels."""
    clients, rounds = 8, 40
    answered: list[list[str]] = [[] for _ in range(clients)]
    labelled: list[dict[str, int]] = [{} for _ in range(clients)]
    failures: list[str] = []

    def client(n: int) -> None:
        population, labels = objects(rounds * 4, 0.0, 100 + n)
        with httpx.Client(base_url=serving.data, timeout=60) as http:
            for i in range(rounds):
                try:
                    one = http.post("/predict", json={"application": population[i]})
                    one.raise_for_status()
                    rid = one.json()["request_id"]
                    answered[n].append(rid)
                    sent = http.post("/feedback", json={"request_id": rid, "label": labels[i]})
                    assert sent.json() == {"recorded": 1}, sent.text
                    labelled[n][rid] = labels[i]
                    if i % 4 == 0:  # a bulk call, labelled in one list
                        chunk = population[rounds + i : rounds + i + 3]
                        many = http.post("/predict/bulk", json={"applications": chunk})
                        many.raise_for_status()
                        ids = many.json()["request_ids"]
                        answered[n] += ids
                        truth = labels[rounds + i : rounds + i + 3]
                        entries = [
                            {"request_id": r, "label": y} for r, y in zip(ids, truth, strict=True)
                        ]
                        sent = http.post("/feedback", json={"feedback": entries})
                        assert sent.json() == {"recorded": 3}, sent.text
                        labelled[n].update(zip(ids, truth, strict=True))
                except (httpx.HTTPError, AssertionError, KeyError) as exc:
                    failures.append(repr(exc))

    threads = [Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    took = time.monotonic() - started
    ids = [rid for mine in answered for rid in mine]
    labels = {rid: label for mine in labelled for rid, label in mine.items()}

    def all_there() -> bool:
        return set(ids) <= set(logged(serving.store))

    wait_until(all_there, 30, "every answer in the prediction log")
    rows = Counter(rid for rid in logged(serving.store) if rid in labels)
    joined = [(rid, label) for rid, label in joined_labels(serving.store) if rid in labels]
    print(
        f"\n[concurrent] {clients} clients, {took:.1f} s: {len(ids)} answers → "
        f"{sum(rows.values())} rows; {len(labels)} labels → {len(joined)} joined; "
        f"{len(failures)} failed calls"
    )
    assert failures == [], failures[:5]
    assert len(set(ids)) == len(ids) == clients * rounds * 7 // 4
    assert sum(rows.values()) == len(ids)
    assert max(rows.values()) == 1
    assert len(joined) == len(labels) == len(ids)
    assert dict(joined) == labels


# -- kill -9: a gRPC front, a serving worker -------------------------------------------------------
def fronts(serve: int) -> dict[int, int]:
    """``{front pid: worker pid}`` of every running gRPC front."""
    return {front: w for w in workers(serve) for front in children(w, "gateway-grpc")}


def test_a_killed_grpc_front_costs_a_retrying_client_nothing(serving: Serving) -> None:
    """kill -9 of the ``gateway-grpc`` front that carries the most client connections: HTTP
    clients see nothing; gRPC clients with the standard retry policy for UNAVAILABLE see
    nothing; plain clients lose the call in flight on each connection the front carried (one
    per connection), and then reconnect to the other worker's front. The worker starts the
    front again."""
    serve = serve_pid(serving.base)
    wait_until(lambda: len(fronts(serve)) == 2, 60, "both workers' gRPC fronts")
    running = fronts(serve)
    request = infer_request(serving.data)
    grpc_port = int(serving.grpc.rsplit(":", 1)[1])
    start = serving.log.stat().st_size
    with (
        Load(f"{serving.data}/predict", 2, pause_s=0.01) as http,
        GrpcLoad(serving.grpc, request, 6, retry=False) as plain,
        GrpcLoad(serving.grpc, request, 6, retry=True) as retrying,
    ):
        plain.wait_for(60)
        retrying.wait_for(60)
        carried = {front: held_connections(front, {grpc_port}) for front in running}
        victim = max(carried, key=lambda front: carried[front])
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def started_again() -> bool:
            text = serving.log.read_bytes()[start:].decode(errors="replace")
            return any(int(pid) not in running for pid in FRONT.findall(text))

        wait_until(started_again, 60, "the killed front started again")
        back_s = time.monotonic() - killed_at
        wait_until(lambda: len(fronts(serve)) == 2, 30, "two fronts")
        plain.wait_for(60)
        retrying.wait_for(60)
        http.wait_for(20)

    lost = [(round(o.at - killed_at, 2), o.caller, o.kind) for o in plain.failures()]
    print(
        f"\n[grpc front kill -9] it carried {carried[victim]} of 12 connections, started again "
        f"after {back_s:.1f} s; failed calls: plain {len(lost)}/{plain.answered() + len(lost)} "
        f"{dict(Counter(o.kind for o in plain.failures()))}, retrying "
        f"{len(retrying.failures())}/{retrying.answered()}, http "
        f"{len(http.failures())}/{len(http.answered())}"
    )
    assert http.failures() == [], http.failures()[:5]
    assert retrying.failures() == [], retrying.failures()[:5]
    # A plain client loses the call in flight on the killed front's connection, nothing more.
    assert len(lost) <= carried[victim], lost
    assert all(n <= 1 for n in Counter(caller for _, caller, _ in lost).values()), lost
    assert all(kind == "UNAVAILABLE" and 0 <= at < 5 for at, _, kind in lost), lost
    assert back_s < 30


def test_a_killed_worker_costs_only_its_requests_in_flight_and_serves_again(
    serving: Serving,
) -> None:
    """kill -9 of the worker holding the most client connections, under load: a connection it
    held loses at most the request in flight on it and one reconnection (while the kernel tears
    the process down, its listening socket still takes connections, for a fraction of a
    second); connections to the other worker lose nothing; gRPC clients that retry on
    UNAVAILABLE lose nothing; BentoML's supervisor starts the worker again and a new process
    answers within two minutes (about 15 s on an idle 2-core box)."""
    serve = serve_pid(serving.base)
    before = workers(serve)
    assert len(before) == 2, before
    seen: set[str] = set()

    def both_seen() -> bool:
        seen.add(prefix(fresh_answer(serving.data)["request_id"]))
        return len(seen) == 2

    wait_until(both_seen, 60, "answers from both workers")
    ports = {int(serving.data.rsplit(":", 1)[1]), int(serving.base.rsplit(":", 1)[1])}
    with (
        Load(f"{serving.data}/predict", 4) as plane,
        Load(f"{serving.base}/predict", 2) as bento,
        GrpcLoad(serving.grpc, infer_request(serving.data), 2, retry=True) as rpc,
    ):
        plane.wait_for(200)
        bento.wait_for(40)
        rpc.wait_for(20)
        held = {w: held_connections(w, ports) for w in before}
        victim = max(held, key=lambda w: held[w])
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def new_worker_answers() -> bool:
            return prefix(fresh_answer(serving.data)["request_id"]) not in seen

        wait_until(new_worker_answers, 120, "an answer from the restarted worker")
        back_s = time.monotonic() - killed_at
        assert len(workers(serve)) == 2
        plane.wait_for(100)
        bento.wait_for(20)
        rpc.wait_for(20)

    lost = [
        (round(o.at - killed_at, 2), (n, o.caller), o.kind)
        for n, load in enumerate((plane, bento))
        for o in load.failures()
    ]
    answers = len(plane.answered()) + len(bento.answered())
    print(
        f"\n[worker kill -9] it held {held[victim]} of 6 client connections; a new worker "
        f"answered {back_s:.1f} s after the kill; failed requests: http "
        f"{len(lost)}/{answers + len(lost)} {dict(Counter(kind for _, _, kind in lost))} "
        f"(bound: 2 per connection it held, {2 * held[victim]}, within 5 s), grpc with retries "
        f"{len(rpc.failures())}/{rpc.answered()}"
    )
    assert len(lost) <= 2 * held[victim], lost
    assert all(n <= 2 for n in Counter(caller for _, caller, _ in lost).values()), lost
    assert all(kind in (NO_ANSWER, CUT) and 0 <= at < 5 for at, _, kind in lost), lost
    assert rpc.failures() == [], rpc.failures()[:5]
    assert back_s < 120


# -- SIGTERM ---------------------------------------------------------------------------------------
def test_sigterm_answers_what_is_in_flight_refuses_the_rest_and_logs_every_answer(
    trained: str, tmp_path: Path
) -> None:
    """SIGTERM to ``bentoml serve`` under load, on the data plane and on BentoML's port:
    requests in flight are answered, later ones are refused (connection refused or 503), no
    answer is cut off, every answer the clients got is in the prediction log and nothing else
    is, and the shutdown logs no error.

    Two races no server closing its sockets avoids, each costing a caller at most one request
    that gets no answer at all (never a partial one): a request written onto a keep-alive
    connection as the server closes it (HTTP/1.1 allows the server to), and a new connection
    the kernel queued on a listening socket that is then closed (it is reset, not refused).
    Behind a load balancer, a replica is taken out of rotation before SIGTERM (deploy/k8s:
    preStop), which is what removes both."""
    state = tmp_path / "state"
    settings = {"state_dir": str(state), "grpc_port": str(free_port())}
    log = tmp_path / "sigterm.log"
    with (
        serve_gateway(trained, tmp_path, settings=settings, name="sigterm") as (base, data),
        Load(f"{data}/predict", 4, until_refused=True) as plane,
        Load(f"{base}/predict", 2, until_refused=True) as bento,
    ):
        serve = serve_pid(base)
        plane.wait_for(300)
        bento.wait_for(60)
        start = log.stat().st_size
        term_at = time.monotonic()
        os.kill(serve, signal.SIGTERM)
        wait_until(lambda: gone(serve), 120, "bentoml serve to exit")
        stopped_s = time.monotonic() - term_at
        wait_until(
            lambda: not any(t.is_alive() for t in plane.threads + bento.threads),
            30,
            "every client refused",
        )
    outcomes = plane.outcomes + bento.outcomes
    answers = [o for o in outcomes if o.kind == ANSWERED]
    after = [o for o in answers if o.at > term_at]
    kinds = Counter(o.kind for o in outcomes if o.kind != ANSWERED)
    unanswered = Counter(o.detail.split("(")[0] for o in outcomes if o.kind == NO_ANSWER)
    rows = logged(f"sqlite:///{state / 'predictions.db'}")
    shutdown = log_lines(log, start)
    errors = [
        line
        for line in shutdown
        if line.level in ("ERROR", "CRITICAL") or "Traceback" in line.message
    ]
    print(
        f"\n[sigterm] exited {stopped_s:.1f} s after SIGTERM; {len(answers)} answers "
        f"({len(after)} after the signal) → {len(rows)} rows in the log; the rest: {dict(kinds)} "
        f"(no answer: {dict(unanswered)}); {len(errors)} error lines at shutdown"
    )
    assert kinds[CUT] == 0, [o for o in outcomes if o.kind == CUT]
    assert set(kinds) <= {REFUSED, NO_ANSWER, "503"}, kinds
    lost = [
        (round(o.at - term_at, 2), (n, o.caller), o.detail)
        for n, load in enumerate((plane, bento))
        for o in load.outcomes
        if o.kind == NO_ANSWER
    ]
    assert all(n <= 2 for n in Counter(caller for _, caller, _ in lost).values()), lost
    assert all(0 <= at < stopped_s for at, _, _ in lost), lost
    for load in (plane, bento):  # every caller ended refused
        last = {o.caller: o.kind for o in load.outcomes}
        assert set(last.values()) == {REFUSED}, last
    assert Counter(rows) == Counter(o.request_id for o in answers)
    assert errors == [], errors


# -- the shared store down under load --------------------------------------------------------------
LOG_BUFFER = 300


def test_a_store_outage_under_load_fails_nothing_and_every_answer_is_logged_or_counted(
    trained: str, tmp_path: Path
) -> None:
    """PostgreSQL, the shared store, stopped for a while under load through a real two-worker
    ``bentoml serve``: no request fails; each worker keeps at most ``GATEWAY_LOG_BUFFER``
    answers, drops the rest and counts them; once the store is back the kept answers are
    written once: answers == rows + dropped, no request id twice."""
    with postgres() as cluster:
        url = cluster.create_database("gateway")
        settings = {
            "state_dir": str(tmp_path / "state"),
            "store_url": url,
            "log_buffer": str(LOG_BUFFER),
            "store_timeout_s": "1",
            "grpc_port": "0",
        }
        with serve_gateway(trained, tmp_path, settings=settings, name="store") as (base, data):
            with Load(f"{data}/predict", 4) as load:
                load.wait_for(200)
                wait_until(lambda: len(logged(url)) >= 200, 30, "answers in the store")
                cluster.stop()
                down_at = time.monotonic()
                load.wait_for(6 * LOG_BUFFER, 120, "answers while the store is down")
                wait_until(
                    lambda: total(base, "gateway_monitor_samples_dropped_total") > 0,
                    30,
                    "drops counted",
                )
                cluster.start()
                up_at = time.monotonic()
                load.wait_for(200, 60, "answers after the store is back")
            answers = [o.request_id for o in load.answered()]

            def settled() -> bool:
                dropped = total(base, "gateway_monitor_samples_dropped_total")
                return len(logged(url)) + dropped == len(answers)

            wait_until(settled, 60, "every answer written or counted as dropped")
            dropped = total(base, "gateway_monitor_samples_dropped_total")
            failed_writes = total(base, "gateway_monitor_errors_total", '{stage="log"}')
        rows = logged(url)
    during = {o.request_id for o in load.answered() if down_at < o.at < up_at}
    kept = during & set(rows)
    print(
        f"\n[store down] {up_at - down_at:.1f} s down: {len(answers)} answers, "
        f"{len(load.failures())} failed; {len(during)} answered while down, {len(kept)} of them "
        f"kept (bound {2 * LOG_BUFFER}); {len(rows)} rows + {dropped:.0f} dropped = "
        f"{len(rows) + dropped:.0f}; {failed_writes:.0f} failed writes counted"
    )
    assert load.failures() == [], load.failures()[:5]
    assert len(rows) == len(set(rows))
    assert set(rows) <= set(answers)
    assert len(rows) + dropped == len(answers)
    assert dropped > 0
    assert len(kept) <= 2 * LOG_BUFFER


# -- the tracking server down ----------------------------------------------------------------------
POLL_S = 0.5
OUTAGE_S = 8.0
WATCHED = "loans@champion"


def test_a_tracking_server_outage_fails_nothing_and_the_alias_is_followed_again(
    pg: Postgres,
    mlflow_template: str,
    tmp_path: Path,
    loans_data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``mlflow server`` killed while a two-worker ``bentoml serve`` follows the alias every
    0.5 s, and started again a while later: no request fails; each worker's watcher logs one
    warning, backs off (its reads of the dead port are counted) and logs once when it reads the
    alias again; a version promoted once the server is back is served."""
    # MLflow's client retries a failed call for minutes by default (7 retries, backoff factor
    # 2): the watcher would sit in one call through the whole outage. Fail each read at once.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    database = f"mlflow_{uuid.uuid4().hex[:12]}"
    pg.create_database(database, template=mlflow_template)
    server = TrackingServer(pg.url(database, PSYCOPG), tmp_path / "artifacts", tmp_path)
    settings = {
        "state_dir": str(tmp_path / "state"),
        "poll_interval_s": str(POLL_S),
        "grpc_port": "0",
    }
    with server:
        train_ok(server.url, "loans", "--data", str(loans_data), *FAST_LOANS)
        second_version(server.url)  # v2: a version to move the alias to
        with (
            serve_gateway(server.url, tmp_path, settings=settings, name="tracking") as (base, data),
            Load(f"{data}/predict", 3, pause_s=0.01) as load,
        ):
            log = tmp_path / "tracking.log"
            load.wait_for(100)
            start = log.stat().st_size
            stopped_at = time.monotonic()
            server.crash()
            with ClosingPort(server.port) as dead:  # the watchers' reads, counted from now
                counting_at = time.monotonic()
                wait_until(
                    lambda: time.monotonic() - counting_at >= OUTAGE_S and len(dead.attempts) >= 2,
                    OUTAGE_S + 60,
                    "an outage with reads of the alias",
                )
            counted_s = time.monotonic() - counting_at
            during = log_lines(log, start)
            back = log.stat().st_size
            server.start()
            back_at = time.monotonic()
            outage_s = back_at - stopped_at
            assert cli(server.url, "promote", "loans", "2").exit_code == 0
            promoted_at = time.monotonic()
            wait_until(lambda: load.versions(20) == {"2"}, 90, "answers from v2")
            followed_s = time.monotonic() - promoted_at
            wait_until(
                lambda: (
                    total(base, "gateway_model_swaps_total", '{model="loans",result="swapped"}')
                    >= 2
                ),
                60,
                "both workers on v2",
            )
            recovered = log_lines(log, back)

    warned = Counter(
        line.source for line in during if line.level == "WARNING" and WATCHED in line.message
    )
    noisy = [line for line in during if line.level in ("WARNING", "ERROR", "CRITICAL")]
    again = Counter(
        line.source for line in recovered if line.level == "INFO" and WATCHED in line.message
    )
    # Two workers, each doubling its wait from POLL_S: about log2(window / POLL_S) reads each.
    bound = 2 * (math.ceil(math.log2(counted_s / POLL_S)) + 2)
    reads = [round(at - counting_at, 1) for at in dead.attempts]
    print(
        f"\n[tracking down] {outage_s:.1f} s down, {len(load.answered())} answers, "
        f"{len(load.failures())} failed; watcher warnings {dict(warned)}; reads of the dead "
        f"port in {counted_s:.1f} s: {len(reads)} at {reads} (every {POLL_S} s: "
        f"{2 * counted_s / POLL_S:.0f}; bound {bound}); 'again' lines {dict(again)}; "
        f"server back → promoted v2 answering in {followed_s:.1f} s "
        f"({promoted_at - back_at:.1f} s to promote)"
    )
    assert load.failures() == [], load.failures()[:5]
    assert sorted(warned.values()) == [1, 1], warned  # one line from each worker
    assert len(noisy) == 2, noisy
    assert len(dead.attempts) <= bound
    assert sorted(again.values()) == [1, 1], again
    assert followed_s < 60


def second_version(uri: str) -> None:
    """Register v1's model again as v2 (the same artifacts, so it loads and verifies), without
    moving the champion alias."""
    client = MlflowClient(uri, uri)
    first = client.get_model_version("loans", "1")
    source = str(first.source)
    model_id = source.removeprefix("models:/")  # the logged model, m-…
    client.create_model_version("loans", source=source, run_id=first.run_id, model_id=model_id)


# -- the loop's processes: drift, retrain, controller ----------------------------------------------
SLOW_RETRAIN = "--param epochs=500"
FAST_RETRAIN = "--param epochs=2 --min-improvement -1"  # always promoted


def copy_store(uri: str, directory: Path) -> str:
    """A copy of the sqlite tracking store at ``uri`` (its artifacts stay where they are)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "mlflow.db"
    with (
        sqlite3.connect(uri.removeprefix("sqlite:///")) as source,
        sqlite3.connect(target) as copy,
    ):
        source.backup(copy)
    return f"sqlite:///{target}"


def firing(fingerprint: str) -> dict[str, Any]:
    """Alertmanager's webhook body for one firing alert."""
    alert = {
        "status": "firing",
        "labels": {"alertname": "LoansDrift", "model": "loans"},
        "startsAt": "2026-11-27T09:00:00Z",
        "fingerprint": fingerprint,
    }
    return {"version": "4", "groupKey": "{}:{}", "status": "firing", "alerts": [alert]}


def retrain_run(client: MlflowClient, trigger: str) -> Any:
    """The MLflow run of the retrain ``trigger`` (None before it exists)."""
    experiment = client.get_experiment_by_name("loans")
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.`lineage.trigger` = '{trigger}'", max_results=1
    )
    return runs[0] if runs else None


def test_killed_loop_processes_leave_serving_untouched_and_a_new_controller_resumes_the_loop(
    trained: str, tmp_path: Path, loans_data: Path
) -> None:
    """Under load through a two-worker ``bentoml serve``, kill -9 in turn: the controller's
    drift process in its first window (that window is lost and counted; the monitor starts
    another process and keeps evaluating windows), a retrain in the
    middle of its epochs (recorded failed, its MLflow run marked FAILED, the champion and the
    registry untouched, nothing left running), and the controller itself; a controller started
    again takes the lease and completes the next alert's retrain, which every worker then
    serves. The client sees no failure throughout."""
    store = copy_store(trained, tmp_path / "tracking")
    registry = MlflowClient(store, store)
    shared = {"state_dir": str(tmp_path / "state"), "poll_interval_s": "1"}
    loop = {
        **shared,
        "alert_token": "s3cret",
        "retrain_data": str(loans_data),
        "drift_window": "40",
        "drift_interval_s": "1",
        "drift_alert_windows": "1000",  # alerts come from the webhook only
        "lease_ttl_s": "3",
    }
    token = {"authorization": "Bearer s3cret"}
    with (
        serve_gateway(store, tmp_path, settings={**shared, "grpc_port": "0"}, name="loop") as (
            _,
            data,
        ),
        Load(f"{data}/predict", 2, pause_s=0.05) as load,  # leaves CPU to the loop's processes
    ):
        settings = {**loop, "retrain_args": SLOW_RETRAIN}
        with run_controller(store, tmp_path, settings=settings, name="controller-1") as (
            first,
            proc,
        ):

            def windows(base: str = first) -> float:
                return total(base, "gateway_drift_windows_total")

            # The drift process, killed as soon as the first window starts it: the window is
            # lost (counted), the monitor starts another process and goes on.
            wait_until(lambda: bool(children(proc.pid, "gateway.lowprio")), 120, "drift process")
            (drift,) = children(proc.pid, "gateway.lowprio")
            evaluated = windows()
            killed_at = time.monotonic()
            os.kill(drift, signal.SIGKILL)

            def evaluating_again() -> bool:
                after = children(proc.pid, "gateway.lowprio")
                return windows() > evaluated and bool(after) and drift not in after

            wait_until(evaluating_again, 120, "a window from a new drift process")
            drift_back_s = time.monotonic() - killed_at
            (again,) = children(proc.pid, "gateway.lowprio")
            drift_errors = total(first, "gateway_monitor_errors_total", '{stage="drift"}')

            # A retrain, killed in the middle of its epochs.
            r = httpx.post(f"{first}/alerts", json=firing("f1"), headers=token, timeout=30)
            (started,) = r.json()["alerts"]
            assert started["retrain"] == "started", started

            def training() -> bool:
                try:  # the retrain writes to the same sqlite store meanwhile
                    run = retrain_run(registry, started["trigger"])
                except Exception:
                    return False
                return run is not None and "train_loss" in run.data.metrics

            wait_until(training, 120, "the retrain's first epoch")
            os.kill(started["pid"], signal.SIGKILL)

            def recorded() -> list[dict[str, Any]]:
                found = httpx.get(f"{first}/retrains", timeout=30).json()["retrains"]
                return [r for r in found if r["finished"] is not None]

            wait_until(lambda: bool(recorded()), 60, "the killed retrain recorded")
            (failed,) = recorded()
            run = retrain_run(registry, started["trigger"])
            versions = registry.search_model_versions("name = 'loans'")
            champion = str(registry.get_model_version_by_alias("loans", "champion").version)
            running = total(first, "gateway_retrain_running", '{model="loans"}')
            assert fresh_answer(data)["model_version"] == "1"

            # The controller itself, killed.
            os.kill(proc.pid, signal.SIGKILL)
            controller_killed_at = time.monotonic()
            wait_until(lambda: gone(again), 60, "its drift process to end with it")
            load.wait_for(100, 60, "answers with no controller")

        settings = {**loop, "retrain_args": FAST_RETRAIN}
        with run_controller(store, tmp_path, settings=settings, name="controller-2") as (
            second,
            _,
        ):
            takeover_s = time.monotonic() - controller_killed_at
            r = httpx.post(f"{second}/alerts", json=firing("f2"), headers=token, timeout=30)
            (resumed,) = r.json()["alerts"]
            assert resumed["retrain"] == "started", resumed

            def outcome() -> str | None:
                found = httpx.get(f"{second}/retrains", timeout=30).json()["retrains"]
                mine = [r for r in found if r["alert_id"] == resumed["trigger"]]
                return mine[0]["result"] if mine else None

            wait_until(lambda: outcome() is not None, 240, "the next retrain's outcome")
            promoted = outcome()
            wait_until(lambda: load.versions(20) == {"2"}, 60, "answers from v2")
            wait_until(lambda: windows(second) >= 1, 120, "drift windows on the new controller")

    answers = load.answered()
    print(
        f"\n[loop kill -9] drift process: a window {drift_back_s:.1f} s after the kill "
        f"({drift_errors:.0f} lost, counted); retrain: {failed['result']}, run {run.info.status}, "
        f"champion v{champion}, {len(versions)} version(s), running gauge {running:.0f}; "
        f"controller: a new one held the lease and took alerts {takeover_s:.1f} s after the "
        f"kill, its retrain {promoted}; client: {len(load.answered())} answers, "
        f"{len(load.failures())} failed, versions {dict(Counter(o.version for o in answers))}"
    )
    assert load.failures() == [], load.failures()[:5]
    assert drift_errors <= 1
    assert failed["result"] == "failed", failed
    assert run.info.status == "FAILED"
    assert champion == "1"
    assert len(versions) == 1
    assert running == 0
    assert promoted == "promoted"
