"""One SQL database named by a URL: a SQLite file (the embedded default, one host) or PostgreSQL
(psycopg 3, several hosts). The gateway keeps its shared state there (prediction log, feedback,
alerts, retrains, leases; the schema is the gateway's migrations); ``trainers lineage`` reads a
prediction back from it.

Statements are written once, with ``?`` placeholders and the SQL both engines speak (``ON
CONFLICT`` upserts included); :meth:`Database.sql` adapts them. Calls on one
:class:`Database` take turns on one connection; a connection that fails is dropped and the next
call opens a new one, so a store that comes back is used again without a restart.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")
Dialect = Literal["sqlite", "postgres"]
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


class StoreError(Exception):
    """The store cannot be reached or refused a statement; the message is one line."""


def redact(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def scrub(text: str, url: str) -> str:
    """``text`` without the password of ``url`` (a driver's message may quote the URL)."""
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


def dialect_of(url: str) -> Dialect:
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        return "sqlite"
    if scheme in POSTGRES_SCHEMES:
        return "postgres"
    raise StoreError(
        f"unsupported store URL {redact(url)!r}: expected sqlite:///PATH or postgresql://..."
    )


def embedded_url(state_dir: Path) -> str:
    """The embedded store of a state directory: ``predictions.db`` in it."""
    return f"sqlite:///{(state_dir / 'predictions.db').resolve()}"


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


class Database:
    """A database behind ``url``; thread-safe, one statement (or transaction) at a time."""

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0) -> None:
        self.url = url
        self.dialect = dialect_of(url)
        self.connect_timeout_s = connect_timeout_s
        self.on_connect: Callable[[Any], None] | None = None
        """Called with each new connection before it is used (the gateway migrates there)."""
        self._conn: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Database({redact(self.url)!r})"

    # -- engine differences -------------------------------------------------------------------
    @property
    def now(self) -> str:
        """SQL for the database's clock in seconds since the epoch (leases use one clock)."""
        if self.dialect == "postgres":
            return "EXTRACT(EPOCH FROM clock_timestamp())::float8"
        return "((julianday('now') - 2440587.5) * 86400.0)"

    @property
    def seq(self) -> str:
        """The column that orders a table's rows by arrival."""
        return "id" if self.dialect == "postgres" else "rowid"

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.dialect == "postgres" else statement

    # -- connections --------------------------------------------------------------------------
    def _open(self) -> Any:
        if self.dialect == "sqlite":
            path = sqlite_path(self.url)
            path.parent.mkdir(parents=True, exist_ok=True)
            conn: Any = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False
            )
        else:
            import psycopg

            dsn = "postgresql" + self.url[self.url.index(":") :]
            conn = psycopg.connect(
                dsn, autocommit=True, connect_timeout=max(1, round(self.connect_timeout_s))
            )
        if self.on_connect is not None:
            try:
                self.on_connect(conn)
            except BaseException:
                conn.close()
                raise
        return conn

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """The connection, held for the block; dropped when the block fails on it."""
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._open()
                yield self._conn
            except Exception as exc:
                if not _database_error(exc):
                    raise
                if _connection_lost(exc):
                    self._drop()
                message = f"{self.dialect} store {redact(self.url)}: {_line(exc)}"
                raise StoreError(scrub(message, self.url)) from exc

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A connection inside BEGIN … COMMIT (rolled back if the block raises)."""
        with self.connection() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except Exception:
                    self._drop()
                raise
            conn.execute("COMMIT")

    def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        with self.connection() as conn:
            return int(conn.execute(self.sql(statement), tuple(params)).rowcount)

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.connection() as conn:
            return [tuple(r) for r in conn.execute(self.sql(statement), tuple(params)).fetchall()]

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing left to close
                return


def _database_error(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error | OSError):
        return True
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(exc, psycopg.Error)


def _connection_lost(exc: BaseException) -> bool:
    """Whether the connection itself is unusable (rather than one statement refused)."""
    if isinstance(exc, sqlite3.IntegrityError):
        return False
    if isinstance(exc, sqlite3.Error | OSError):
        return True
    import psycopg

    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
