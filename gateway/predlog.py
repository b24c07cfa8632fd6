"""The prediction log: every answered object under its request id, the ground truth that comes
back for it later, and the alerts and retrains of the loop — one SQLite file (WAL) shared by the
workers of a serve.

Each batch, once answered, is offered whole from the batch thread: its objects are serialized
(pydantic's own serializer, once per object) and the strings appended to a bounded buffer (a full
buffer drops the samples and counts them; it never blocks). One offer per batch rather than per
request costs about a third as much per object. Strings are not tracked by Python's garbage
collector: buffering the objects themselves kept every request's input and answer alive until the
next flush, which made the collector run dozens of times as often on a busy worker, and a full
buffer holds text rather than objects. A writer thread inserts the buffer in one transaction of
multi-row ``VALUES`` statements (up to CHUNK rows each): a statement's rows are bound at once, and
SQLite then runs it without the GIL. (Row by row, ``executemany`` gives the GIL back and waits
for it again at every row; on a busy worker each wait can last the interpreter's 5 ms switch
interval. Passing the batch as one JSON array that SQLite unpacks with ``json_each`` parses
every row again and costs twice the CPU per row. Handing the batch to a child process that
inserts it was tried too: the same throughput, one more process.)

Request ids are time-ordered (see ``request_ids``), so the primary key grows at its end; random
UUIDs cost about twice the CPU per insert, spent updating pages all over the index.

Tables (the retrain data source reads ``predictions`` joined with ``feedback``):
``predictions(request_id, ts, model, version, input, output)`` with JSON ``input``/``output``,
``feedback(request_id, label, ts)`` with a JSON ``label``, ``alerts(key, ts, source, detail)``,
``retrains(alert_id, model, started, pid, finished, result, detail, version, log)``.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gateway.locks import held
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT PRIMARY KEY, ts REAL NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL,
    input TEXT NOT NULL, output TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS predictions_model ON predictions (model, version);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY, label TEXT NOT NULL, ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (
    key TEXT PRIMARY KEY, ts REAL NOT NULL, source TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS retrains (
    alert_id TEXT PRIMARY KEY, model TEXT NOT NULL, started REAL NOT NULL, pid INTEGER,
    finished REAL, result TEXT, detail TEXT, version TEXT, log TEXT);
"""
FLUSH_S = 0.2
COLUMNS = 3  # bound per row: request id, input, output
CHUNK = 256  # rows per statement at most; a flush's remainder goes in power-of-two statements


class _Ids:
    """Where request ids come from: this process's random prefix and a counter (both renewed in
    a forked child, so two workers never share them)."""

    def __init__(self) -> None:
        self.renew()
        os.register_at_fork(after_in_child=self.renew)

    def renew(self) -> None:
        self.prefix = secrets.token_hex(5)
        self.counter = itertools.count(secrets.randbelow(1 << 20))


_IDS = _Ids()


def request_ids(n: int) -> list[str]:
    """``n`` new request ids: 32 hex digits, the time in microseconds (13), a random prefix for
    this process (10) and a counter (9). Unique across workers and restarts, and increasing with
    time, so the log's primary key is appended to rather than updated all over."""
    now = time.time_ns() // 1000
    prefix, counter = _IDS.prefix, _IDS.counter
    return [f"{now:013x}{prefix}{next(counter) & 0xF_FFFF_FFFF:09x}" for _ in range(n)]


@dataclass(frozen=True)
class Row:
    rowid: int
    request_id: str
    version: str
    input: dict[str, Any]
    output: dict[str, Any]
    label: Any = None


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    # Workers starting together open the log together. Switching a new file to WAL while
    # another connection creates the schema makes SQLite answer "database is locked" at once,
    # without waiting out the timeout, so the processes of this host set it up one at a time.
    with held(f"{path}.setup-lock"):
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
    return conn


@functools.lru_cache(maxsize=16)
def insert(rows: int) -> str:
    """The statement that inserts ``rows`` rows: ts, model and version, then the rows' columns."""
    values = ",".join(["(?,?,?)"] * rows)
    return (
        "INSERT OR IGNORE INTO predictions (ts, model, version, request_id, input, output) "
        f"SELECT ?, ?, ?, column1, column2, column3 FROM (VALUES {values})"
    )


def statements(rows: int) -> list[int]:
    """Rows per statement for ``rows`` rows: CHUNK while it fits, then powers of two, so a
    handful of statement shapes (all in the connection's statement cache) cover any flush."""
    sizes = [CHUNK] * (rows // CHUNK)
    rest = rows % CHUNK
    sizes += [1 << bit for bit in reversed(range(CHUNK.bit_length())) if rest & (1 << bit)]
    return sizes


class _Pending:
    """Serialized objects of one (model, version) waiting for the writer: request id, input
    and output of each, one after the other."""

    __slots__ = ("columns", "count")

    def __init__(self) -> None:
        self.columns: list[str] = []
        self.count = 0


class PredictionLog:
    def __init__(self, path: Path, capacity: int, metrics: GatewayMetrics) -> None:
        self.path = path
        self.capacity = capacity
        self.metrics = metrics
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._queued = 0  # objects in _pending
        self._serializing = 0.0  # CPU seconds offer spent on them
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()  # one statement at a time on the shared connection
        self._conn = connect(path)
        self._writer = threading.Thread(target=self._write_loop, name="prediction-log", daemon=True)
        self._writer.start()

    # -- the batch thread -------------------------------------------------------------------
    def offer(
        self,
        model: str,
        version: str,
        request_ids: Sequence[str],
        items: Sequence[BaseModel],
        answers: Sequence[BaseModel],
    ) -> None:
        """Queue the objects ``version`` answered, serialized (the log keeps no reference to
        them); drop (and count) what does not fit."""
        room = max(self.capacity - self._queued, 0)
        count = min(len(request_ids), room)
        if count < len(request_ids):
            dropped = len(request_ids) - count
            self.metrics.safely(lambda: self.metrics.samples_dropped.inc(dropped))
        if not count:
            return
        started = time.thread_time()  # wall time would also count waits for the GIL
        columns: list[str] = []
        try:
            rows = zip(request_ids[:count], items[:count], answers[:count], strict=True)
            for rid, item, answer in rows:
                inputs = item.__pydantic_serializer__.to_json(item)
                output = answer.__pydantic_serializer__.to_json(answer)
                columns += (rid, inputs.decode(), output.decode())
        except Exception:
            log.exception("could not serialize %d predictions for the log", count)
            self.metrics.safely(lambda: self.metrics.monitor_errors.labels("log").inc())
            self.metrics.safely(lambda: self.metrics.samples_dropped.inc(count))
            return
        with self._pending_lock:
            pending = self._pending.get((model, version))
            if pending is None:
                pending = self._pending[(model, version)] = _Pending()
            pending.columns += columns
            pending.count += count
            self._queued += count
            self._serializing += time.thread_time() - started

    # -- the writer -------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while not self._stopping:
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._pending_lock:
            batch, self._pending, self._queued = self._pending, {}, 0
            serializing, self._serializing = self._serializing, 0.0
        if not batch:
            return
        started, now = time.thread_time(), time.time()
        try:
            self._write(batch, now)
        finally:
            spent = serializing + time.thread_time() - started
            self.metrics.safely(lambda: self.metrics.log_cpu.inc(spent))

    def _write(self, batch: dict[tuple[str, str], _Pending], now: float) -> None:
        for (model, version), pending in batch.items():  # one unless a swap happened meanwhile
            try:
                with self._lock:
                    self._insert(now, model, version, pending.columns)
            except Exception:
                log.exception("could not write %d predictions to %s", pending.count, self.path)
                self.metrics.safely(lambda: self.metrics.monitor_errors.labels("log").inc())
                lost = functools.partial(self.metrics.samples_dropped.inc, pending.count)
                self.metrics.safely(lost)

    def _insert(self, now: float, model: str, version: str, columns: list[str]) -> None:
        conn, start = self._conn, 0
        conn.execute("BEGIN")
        try:
            for rows in statements(len(columns) // COLUMNS):
                end = start + rows * COLUMNS
                conn.execute(insert(rows), (now, model, version, *columns[start:end]))
                start = end
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._writer.join(timeout=5)
        self.flush()
        with self._lock:
            self._conn.close()

    # -- feedback, alerts, retrains -----------------------------------------------------------
    def record_feedback(self, labels: Sequence[tuple[str, Any]]) -> None:
        now = time.time()
        rows = [(rid, json.dumps(label), now) for rid, label in labels]
        with self._lock, self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany("INSERT OR REPLACE INTO feedback VALUES (?, ?, ?)", rows)

    def first_alert(self, key: str, source: str, detail: dict[str, Any]) -> bool:
        """Record alert ``key``; False when it was seen before (by any worker)."""
        with self._lock:
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO alerts VALUES (?, ?, ?, ?)",
                (key, time.time(), source, json.dumps(detail, default=str)),
            )
        return cursor.rowcount == 1

    def forget_alert(self, key: str) -> None:
        """Let alert ``key`` start the path again (its retrain could not even start)."""
        with self._lock:
            self._conn.execute("DELETE FROM alerts WHERE key = ?", (key,))

    def retrain_started(self, alert_id: str, model: str, pid: int, log_path: str) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO retrains (alert_id, model, started, pid, log) "
                "VALUES (?, ?, ?, ?, ?)",
                (alert_id, model, time.time(), pid, log_path),
            )

    def retrain_finished(
        self, alert_id: str, result: str, detail: str, version: str | None
    ) -> None:
        with self._lock:
            self._conn.execute(
                "UPDATE retrains SET finished = ?, result = ?, detail = ?, version = ? "
                "WHERE alert_id = ?",
                (time.time(), result, detail, version, alert_id),
            )

    def retrains(self, model: str, limit: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            cursor = self._conn.execute(
                "SELECT alert_id, started, pid, finished, result, detail, version, log "
                "FROM retrains WHERE model = ? ORDER BY started DESC LIMIT ?",
                (model, limit),
            )
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # -- reading windows --------------------------------------------------------------------
    def window(self, model: str, version: str, after: int, size: int) -> list[Row]:
        """The newest ``size`` objects ``version`` answered after row ``after``, oldest first —
        or nothing while fewer have arrived (counted on the index; no row is read or parsed)."""
        where = "WHERE model = ? AND version = ? AND rowid > ?"
        with self._lock:
            (arrived,) = self._conn.execute(
                f"SELECT count(*) FROM (SELECT 1 FROM predictions {where} LIMIT ?)",
                (model, version, after, size),
            ).fetchone()
            if arrived < size:
                return []
            rows = self._conn.execute(
                "SELECT rowid, request_id, version, input, output FROM predictions "
                f"{where} ORDER BY rowid DESC LIMIT ?",
                (model, version, after, size),
            ).fetchall()
        return [_row(r) for r in reversed(rows)]

    def labelled(self, model: str, version: str | None, size: int) -> list[Row]:
        """The newest ``size`` labelled objects (of ``version``, or of any version)."""
        query = (
            "SELECT p.rowid, p.request_id, p.version, p.input, p.output, f.label "
            "FROM feedback f JOIN predictions p ON p.request_id = f.request_id "
            "WHERE p.model = ?" + (" AND p.version = ?" if version is not None else "")
        )
        args: tuple[Any, ...] = (model, version) if version is not None else (model,)
        with self._lock:
            rows = self._conn.execute(
                query + " ORDER BY f.rowid DESC LIMIT ?", (*args, size)
            ).fetchall()
        return [_row(r) for r in reversed(rows)]


def _row(raw: tuple[Any, ...]) -> Row:
    label = json.loads(raw[5]) if len(raw) > 5 else None
    return Row(raw[0], raw[1], raw[2], json.loads(raw[3]), json.loads(raw[4]), label)
