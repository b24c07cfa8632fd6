"""The shared store: every replica's prediction log, the ground truth that comes back for it, and
the loop's alerts, retrains and leases, in one database — SQLite on one host (the embedded
default), PostgreSQL for a deployment of several (``GATEWAY_STORE_URL``). Same code, another URL.

The schema is the SQL files under ``migrations/<engine>/``, applied in order once per database
and recorded in ``schema_migrations``; processes that open a new store together take turns (an
advisory lock on PostgreSQL, a lock file beside a SQLite file).

Appends come batched from :class:`gateway.predlog.PredictionLog`: on SQLite as multi-row
``VALUES`` statements (SQLite runs a statement's rows without the GIL), on PostgreSQL as one
``COPY``. Request ids are time-ordered (:func:`gateway.predlog.request_ids`), so the primary key
grows at its end.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.locks import held
from trainers.sqlstore import Database, sqlite_path

MIGRATIONS = Path(__file__).with_name("migrations")
COLUMNS = 3  # bound per logged object: request id, input, output
CHUNK = 256  # rows per SQLite statement at most; the rest in power-of-two statements
_ADVISORY_KEY = 0x6C696E65  # any constant: the migration lock's name on PostgreSQL


@dataclass(frozen=True)
class Row:
    rowid: int
    request_id: str
    version: str
    input: dict[str, Any]
    output: dict[str, Any]
    label: Any = None


@functools.lru_cache(maxsize=16)
def sqlite_insert(rows: int) -> str:
    """The statement that inserts ``rows`` rows: ts, model and version, then the rows' columns."""
    values = ",".join(["(?,?,?)"] * rows)
    return (
        "INSERT INTO predictions (ts, model, version, request_id, input, output) "
        f"SELECT ?, ?, ?, column1, column2, column3 FROM (VALUES {values}) "
        "WHERE true ON CONFLICT DO NOTHING"
    )


def statements(rows: int) -> list[int]:
    """Rows per statement for ``rows`` rows: CHUNK while it fits, then powers of two, so a
    handful of statement shapes (all in the connection's statement cache) cover any flush."""
    sizes = [CHUNK] * (rows // CHUNK)
    rest = rows % CHUNK
    sizes += [1 << bit for bit in reversed(range(CHUNK.bit_length())) if rest & (1 << bit)]
    return sizes


def migrate(db: Database, conn: Any) -> None:
    """Apply the migrations ``conn``'s database has not seen, in order, each in a transaction."""
    if db.dialect == "sqlite":
        path = sqlite_path(db.url)
        # Switching a new file to WAL while another process creates the schema makes SQLite
        # answer "database is locked" at once: the processes of a host set it up in turn.
        with held(f"{path}.setup-lock"):
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            _apply(db, conn)
        return
    conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_KEY,))
    try:
        _apply(db, conn)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_KEY,))


def _apply(db: Database, conn: Any) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied DOUBLE PRECISION NOT NULL)"
    )
    done = {int(v) for (v,) in conn.execute("SELECT version FROM schema_migrations").fetchall()}
    for path in sorted((MIGRATIONS / db.dialect).glob("*.sql")):
        version = int(path.name.split("_", 1)[0])
        if version in done:
            continue
        conn.execute("BEGIN")
        try:
            for statement in _statements(path.read_text()):
                conn.execute(statement)
            conn.execute(
                db.sql("INSERT INTO schema_migrations VALUES (?, ?, ?)"),
                (version, path.stem, time.time()),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """A migration's statements (its comments dropped; no statement holds a ``;``)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class Store:
    """The shared state behind ``url``: a connection opened on first use (and again after one
    fails), the schema brought up to date on each new connection."""

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0) -> None:
        self.db = Database(url, connect_timeout_s=connect_timeout_s)
        self.db.on_connect = functools.partial(migrate, self.db)

    def __repr__(self) -> str:
        return f"Store({self.db!r})"

    def open(self) -> None:
        """Connect (and bring the schema up to date) now rather than at the first use."""
        with self.db.connection():
            pass

    def close(self) -> None:
        self.db.close()

    # -- the prediction log ---------------------------------------------------------------------
    def append(self, now: float, model: str, version: str, columns: Sequence[str]) -> None:
        """Append objects ``version`` answered: ``columns`` holds request id, input and output
        of each, one after the other. One transaction; a request id seen before is skipped."""
        if self.db.dialect == "postgres":
            self._copy(now, model, version, columns)
            return
        start = 0
        with self.db.transaction() as conn:
            for rows in statements(len(columns) // COLUMNS):
                end = start + rows * COLUMNS
                conn.execute(sqlite_insert(rows), (now, model, version, *columns[start:end]))
                start = end

    def _copy(self, now: float, model: str, version: str, columns: Sequence[str]) -> None:
        copy = "COPY predictions (ts, model, version, request_id, input, output) FROM STDIN"
        try:
            with self.db.transaction() as conn, conn.cursor().copy(copy) as out:
                for i in range(0, len(columns), COLUMNS):
                    out.write_row((now, model, version, *columns[i : i + COLUMNS]))
        except Exception as exc:
            if "duplicate key" not in str(exc):
                raise
            # A retried flush whose first try was committed after all: keep what is new.
            rows = [
                (now, model, version, *columns[i : i + COLUMNS])
                for i in range(0, len(columns), COLUMNS)
            ]
            with self.db.transaction() as conn:
                conn.cursor().executemany(
                    "INSERT INTO predictions (ts, model, version, request_id, input, output) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    rows,
                )

    def window(self, model: str, version: str, after: int, size: int) -> list[Row]:
        """The newest ``size`` objects ``version`` answered after row ``after``, oldest first —
        or nothing while fewer have arrived (counted on the index; no row is read or parsed)."""
        seq = self.db.seq
        where = f"WHERE model = ? AND version = ? AND {seq} > ?"
        (arrived,), *_ = self.db.query(
            f"SELECT count(*) FROM (SELECT 1 FROM predictions {where} LIMIT ?) AS w",
            (model, version, after, size),
        )
        if arrived < size:
            return []
        rows = self.db.query(
            f"SELECT {seq}, request_id, version, input, output FROM predictions "
            f"{where} ORDER BY {seq} DESC LIMIT ?",
            (model, version, after, size),
        )
        return [_row(r) for r in reversed(rows)]

    def labelled(self, model: str, version: str | None, size: int) -> list[Row]:
        """The newest ``size`` labelled objects (of ``version``, or of any version)."""
        seq = self.db.seq
        query = (
            f"SELECT p.{seq}, p.request_id, p.version, p.input, p.output, f.label "
            "FROM feedback f JOIN predictions p ON p.request_id = f.request_id "
            "WHERE p.model = ?" + (" AND p.version = ?" if version is not None else "")
        )
        args: tuple[Any, ...] = (model, version) if version is not None else (model,)
        rows = self.db.query(query + f" ORDER BY f.{seq} DESC LIMIT ?", (*args, size))
        return [_row(r) for r in reversed(rows)]

    def record_feedback(self, labels: Sequence[tuple[str, Any]]) -> None:
        now = time.time()
        rows = [(rid, json.dumps(label), now) for rid, label in labels]
        statement = self.db.sql(
            "INSERT INTO feedback (request_id, label, ts) VALUES (?, ?, ?) "
            "ON CONFLICT (request_id) DO UPDATE SET label = excluded.label, ts = excluded.ts"
        )
        with self.db.transaction() as conn:
            conn.cursor().executemany(statement, rows)

    # -- alerts and retrains ----------------------------------------------------------------------
    def first_alert(self, key: str, source: str, detail: dict[str, Any]) -> bool:
        """Record alert ``key``; False when it was seen before (by any controller)."""
        changed = self.db.execute(
            "INSERT INTO alerts (key, ts, source, detail) VALUES (?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (key, time.time(), source, json.dumps(detail, default=str)),
        )
        return changed == 1

    def forget_alert(self, key: str) -> None:
        """Let alert ``key`` start the path again (its retrain could not even start)."""
        self.db.execute("DELETE FROM alerts WHERE key = ?", (key,))

    def retrain_started(
        self, alert_id: str, alert_key: str, *, model: str, host: str, pid: int, log: str
    ) -> None:
        self.db.execute(
            "INSERT INTO retrains (alert_id, alert_key, model, started, host, pid, log) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (alert_id, alert_key, model, time.time(), host, pid, log),
        )

    def retrain_finished(
        self, alert_id: str, result: str, detail: str, version: str | None
    ) -> None:
        self.db.execute(
            "UPDATE retrains SET finished = ?, result = ?, detail = ?, version = ? "
            "WHERE alert_id = ? AND finished IS NULL",
            (time.time(), result, detail, version, alert_id),
        )

    def retrains(self, model: str, limit: int = 20) -> list[dict[str, Any]]:
        return self._retrains("WHERE model = ? ORDER BY started DESC LIMIT ?", (model, limit))

    def running_retrains(self, model: str) -> list[dict[str, Any]]:
        """Retrains of ``model`` whose outcome is not recorded yet."""
        return self._retrains("WHERE model = ? AND finished IS NULL ORDER BY started", (model,))

    def _retrains(self, where: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        names = (
            "alert_id",
            "alert_key",
            "started",
            "host",
            "pid",
            "finished",
            "result",
            "detail",
            "version",
            "log",
        )
        rows = self.db.query(f"SELECT {', '.join(names)} FROM retrains {where}", args)
        return [dict(zip(names, row, strict=True)) for row in rows]

    # -- leases -------------------------------------------------------------------------------
    def hold(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew lease ``name`` for ``ttl_s`` seconds of the database's clock; False
        while another holder's lease has not expired."""
        now = self.db.now
        changed = self.db.execute(
            f"INSERT INTO leases (name, holder, expires) VALUES (?, ?, {now} + ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "expires = excluded.expires "
            f"WHERE leases.holder = excluded.holder OR leases.expires < {now}",
            (name, holder, ttl_s),
        )
        return changed == 1

    def let_go(self, name: str, holder: str) -> None:
        """End ``holder``'s lease now, so another may take it at once."""
        self.db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    def holder(self, name: str) -> tuple[str, float] | None:
        """Who holds lease ``name`` and for how many more seconds (None: nobody)."""
        rows = self.db.query(
            f"SELECT holder, expires - {self.db.now} FROM leases WHERE name = ?", (name,)
        )
        if not rows or rows[0][1] <= 0:
            return None
        return str(rows[0][0]), float(rows[0][1])


def _row(raw: tuple[Any, ...]) -> Row:
    label = json.loads(raw[5]) if len(raw) > 5 else None
    return Row(raw[0], raw[1], raw[2], json.loads(raw[3]), json.loads(raw[4]), label)
