"""The prediction log: request ids, and what one flush writes — into the embedded SQLite store and
into PostgreSQL."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from gateway.metrics import GatewayMetrics
from gateway.predlog import PredictionLog, request_ids
from gateway.store import CHUNK, Store, statements
from tests.services import Postgres
from trainers.sqlstore import StoreError


class Review(BaseModel):
    text: str
    stars: int | None = None


class Verdict(BaseModel):
    sentiment: Literal["positive", "negative"]
    confidence: float


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A new shared store of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'predictions.db'}"
    else:
        pg: Postgres = request.getfixturevalue("pg")
        url = pg.create_database(f"log_{uuid.uuid4().hex[:12]}")
    found = Store(url)
    yield found
    found.close()


@pytest.fixture
def predictions(store: Store, metrics: GatewayMetrics) -> Iterator[PredictionLog]:
    found = PredictionLog(store, capacity=100, metrics=metrics)
    yield found
    found.close()


def all_rows(store: Store) -> list[tuple[Any, ...]]:
    return store.db.query(
        f"SELECT request_id, model, version, input, output FROM predictions ORDER BY {store.db.seq}"
    )


def counted(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_request_ids_are_unique_hex_and_grow_with_time() -> None:
    first = request_ids(1_000)
    later = request_ids(1_000)
    both = first + later
    assert len(set(both)) == len(both)
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in both)
    assert max(first) < min(later)  # appended at the end of the log's primary key


def test_a_forked_worker_draws_ids_of_its_own() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its ids and leave without running pytest's exit
        os.write(write, json.dumps(request_ids(100)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = json.loads(pipe.read())
    mine = request_ids(100)
    assert {rid[13:23] for rid in child}.isdisjoint({rid[13:23] for rid in mine})
    assert set(child).isdisjoint(mine)


def test_workers_opening_a_new_log_together_all_get_it(tmp_path: Path) -> None:
    """Four processes open the same new log at one moment, fifteen times over: each opens it
    (switching a new file to WAL while another process creates the schema is refused at once
    by SQLite, which crashed a starting worker)."""
    failures = []
    for trial in range(15):
        path = tmp_path / f"trial-{trial}" / "predictions.db"
        start = time.monotonic() + 0.2
        children = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:  # the child: leave without running pytest's exit
                while time.monotonic() < start:
                    pass
                try:
                    Store(f"sqlite:///{path}").db.query("SELECT count(*) FROM predictions")
                except StoreError:
                    os._exit(1)
                os._exit(0)
            children.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
        failures += [(trial, code) for code in codes if code != 0]
    assert failures == []


def test_a_flush_writes_each_object_with_its_version(
    predictions: PredictionLog, metrics: GatewayMetrics
) -> None:
    items = [Review(text='Très bon ☃ "quoted" \\ line\nbreak', stars=5), Review(text="meh")]
    answers = [
        Verdict(sentiment="positive", confidence=0.9),
        Verdict(sentiment="negative", confidence=0.25),
    ]
    ids = request_ids(3)
    predictions.offer("reviews", "1", ids[:1], items[:1], answers[:1])
    predictions.offer("reviews", "2", ids[1:], [items[1], items[0]], [answers[1], answers[1]])
    predictions.flush()
    rows = all_rows(predictions.store)
    assert [(rid, model, version) for rid, model, version, _, _ in rows] == [
        (ids[0], "reviews", "1"),
        (ids[1], "reviews", "2"),
        (ids[2], "reviews", "2"),
    ]
    assert [Review.model_validate_json(row[3]) for row in rows] == [items[0], items[1], items[0]]
    assert [Verdict.model_validate_json(row[4]) for row in rows] == [
        answers[0],
        answers[1],
        answers[1],
    ]
    window = predictions.store.window("reviews", "2", after=0, size=2)
    assert [row.request_id for row in window] == ids[1:]
    assert window[0].input == {"text": "meh", "stars": None}
    assert counted(metrics, "gateway_monitor_samples_dropped_total") == 0
    assert counted(metrics, "gateway_prediction_log_cpu_seconds_total") > 0


@pytest.mark.parametrize("rows", [1, CHUNK - 1, CHUNK, 2 * CHUNK + 37])
def test_rows_per_statement_cover_a_flush_in_few_shapes(rows: int) -> None:
    sizes = statements(rows)
    assert sum(sizes) == rows
    assert all(size == CHUNK or (size < CHUNK and size & (size - 1) == 0) for size in sizes)
    assert len(sizes) - sizes.count(CHUNK) <= CHUNK.bit_length()


def test_a_flush_larger_than_one_statement_keeps_every_row_in_order(
    store: Store, metrics: GatewayMetrics
) -> None:
    log = PredictionLog(store, capacity=10_000, metrics=metrics)
    try:
        answer = Verdict(sentiment="positive", confidence=0.5)
        ids = request_ids(2 * CHUNK + 37)
        for start in range(0, len(ids), 100):
            part = ids[start : start + 100]
            items = [Review(text=f"review {start + i}", stars=i % 5) for i in range(len(part))]
            log.offer("reviews", "1", part, items, [answer] * len(part))
        log.flush()
        rows = store.window("reviews", "1", after=0, size=len(ids))
    finally:
        log.close()
    assert [row.request_id for row in rows] == ids
    assert [row.input["text"] for row in rows] == [f"review {i}" for i in range(len(ids))]
    assert {row.version for row in rows} == {"1"}


def test_a_full_buffer_drops_and_counts(
    predictions: PredictionLog, metrics: GatewayMetrics
) -> None:
    answer = Verdict(sentiment="positive", confidence=1)
    for _ in range(3):  # capacity 100
        predictions.offer("reviews", "1", request_ids(50), [Review(text="x")] * 50, [answer] * 50)
    assert counted(metrics, "gateway_monitor_samples_dropped_total") == 50
    predictions.flush()
    assert len(all_rows(predictions.store)) == 100


def test_a_store_that_fails_keeps_the_objects_within_the_bound_until_it_answers(
    predictions: PredictionLog, metrics: GatewayMetrics
) -> None:
    store, answer = predictions.store, Verdict(sentiment="positive", confidence=1)
    store.db.execute("ALTER TABLE predictions RENAME TO kept")  # the append cannot go in
    store.db.execute("CREATE TABLE predictions (request_id TEXT)")
    first = request_ids(60)
    predictions.offer("reviews", "1", first, [Review(text="x")] * 60, [answer] * 60)
    assert predictions.flush() is False
    assert predictions.queued == 60  # kept, not lost
    later = request_ids(60)
    predictions.offer("reviews", "1", later, [Review(text="y")] * 60, [answer] * 60)
    assert predictions.flush() is False
    assert predictions.queued == 100  # the bound
    assert counted(metrics, "gateway_monitor_errors_total", stage="log") == 2
    assert counted(metrics, "gateway_monitor_samples_dropped_total") == 20
    store.db.execute("DROP TABLE predictions")
    store.db.execute("ALTER TABLE kept RENAME TO predictions")
    assert predictions.flush() is True
    written = [row.request_id for row in store.window("reviews", "1", 0, 100)]
    assert written == first + later[:40]  # the oldest first, nothing twice


def test_queued_objects_are_kept_serialized_not_referenced(predictions: PredictionLog) -> None:
    """The buffer holds text: a request's objects are freed when it ends, not at the next
    flush (objects kept alive in bulk make the garbage collector run all the time)."""
    item, answer = Review(text="kept?"), Verdict(sentiment="negative", confidence=0.5)
    before = sys.getrefcount(item), sys.getrefcount(answer)
    predictions.offer("reviews", "1", request_ids(1), [item], [answer])
    assert (sys.getrefcount(item), sys.getrefcount(answer)) == before
    predictions.flush()
    (row,) = predictions.store.window("reviews", "1", after=0, size=1)
    assert row.input == {"text": "kept?", "stars": None}
    assert row.output == answer.model_dump(mode="json")
