"""The prediction log: every answered object under its request id, appended to the shared store
(:mod:`gateway.store`) by a writer thread in each serving worker.

Each batch, once answered, is offered whole from the batch thread: its objects are serialized
(pydantic's own serializer, once per object) and the strings appended to a bounded buffer (a full
buffer drops the samples and counts them; it never blocks). One offer per batch rather than per
request costs about a third as much per object. Strings are not tracked by Python's garbage
collector: buffering the objects themselves kept every request's input and answer alive until the
next flush, which made the collector run dozens of times as often on a busy worker, and a full
buffer holds text rather than objects. The writer appends the buffer in one transaction (see
:meth:`gateway.store.Store.append`) every ``FLUSH_S``.

A store that cannot be reached fails nothing: the batch goes back into the buffer (within its
bound; what does not fit is dropped and counted) and the writer tries again, backing off to
``RETRY_MAX_S`` between tries; the store's driver gives up on a connection after
``GATEWAY_STORE_TIMEOUT_S``. Requests never wait for the store.

Request ids are time-ordered (see ``request_ids``), so the log's primary key grows at its end;
random UUIDs cost about twice the CPU per insert, spent updating pages all over the index.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence

from pydantic import BaseModel

from gateway.metrics import GatewayMetrics
from gateway.store import COLUMNS, Store

log = logging.getLogger(__name__)

FLUSH_S = 0.2
RETRY_MAX_S = 5.0


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
    this process (10) and a counter (9). Unique across workers, replicas and restarts, and
    increasing with time, so the log's primary key is appended to rather than updated all over."""
    now = time.time_ns() // 1000
    prefix, counter = _IDS.prefix, _IDS.counter
    return [f"{now:013x}{prefix}{next(counter) & 0xF_FFFF_FFFF:09x}" for _ in range(n)]


class _Pending:
    """Serialized objects of one (model, version) waiting for the writer: request id, input
    and output of each, one after the other."""

    __slots__ = ("columns", "count")

    def __init__(self) -> None:
        self.columns: list[str] = []
        self.count = 0


class PredictionLog:
    """The buffer of one worker and the thread that appends it to ``store``."""

    def __init__(self, store: Store, capacity: int, metrics: GatewayMetrics) -> None:
        self.store = store
        self.capacity = capacity
        self.metrics = metrics
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._queued = 0  # objects in _pending
        self._serializing = 0.0  # CPU seconds offer spent on them
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._failures = 0  # flushes failed in a row
        self._writer = threading.Thread(target=self._write_loop, name="prediction-log", daemon=True)
        self._writer.start()

    @property
    def queued(self) -> int:
        """Objects waiting for the writer."""
        return self._queued

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
            self._add(model, version, columns, count)
            self._serializing += time.thread_time() - started

    def _add(self, model: str, version: str, columns: list[str], count: int) -> None:
        pending = self._pending.get((model, version))
        if pending is None:
            pending = self._pending[(model, version)] = _Pending()
        pending.columns += columns
        pending.count += count
        self._queued += count

    # -- the writer -------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while not self._stopping:
            backoff = min(FLUSH_S * 2**self._failures, RETRY_MAX_S)
            self._wake.wait(backoff)
            self._wake.clear()
            self.flush()

    def flush(self) -> bool:
        """Append what is queued; False when the store refused it (it stays queued)."""
        with self._pending_lock:
            batch, self._pending, self._queued = self._pending, {}, 0
            serializing, self._serializing = self._serializing, 0.0
        if not batch:
            return True
        started, now = time.thread_time(), time.time()
        try:
            return self._write(batch, now)
        finally:
            spent = serializing + time.thread_time() - started
            self.metrics.safely(lambda: self.metrics.log_cpu.inc(spent))

    def _write(self, batch: dict[tuple[str, str], _Pending], now: float) -> bool:
        for key, pending in list(batch.items()):  # one unless a swap happened meanwhile
            try:
                self.store.append(now, *key, pending.columns)
            except Exception as exc:
                self._failed(batch, exc)
                return False
            del batch[key]
        if self._failures:
            log.warning("prediction log: the store answers again (%r)", self.store)
        self._failures = 0
        return True

    def _failed(self, batch: dict[tuple[str, str], _Pending], exc: Exception) -> None:
        """Put what was not written back in front of the queue, within the bound."""
        if not self._failures:
            log.error(
                "prediction log: cannot write (%s); keeping up to %d objects", exc, self.capacity
            )
        self._failures += 1
        self.metrics.safely(lambda: self.metrics.monitor_errors.labels("log").inc())
        with self._pending_lock:
            newer, self._pending, self._queued = self._pending, {}, 0
            dropped = 0
            for key, pending in [*batch.items(), *newer.items()]:
                room = max(self.capacity - self._queued, 0)
                keep = min(pending.count, room)
                dropped += pending.count - keep
                if keep:
                    self._add(*key, pending.columns[: keep * COLUMNS], keep)
        if dropped:
            self.metrics.safely(lambda: self.metrics.samples_dropped.inc(dropped))

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._writer.join(timeout=10)
        if not self.flush() and self._queued:
            lost = self._queued
            log.error("prediction log: %d objects not written at shutdown", lost)
            self.metrics.safely(lambda: self.metrics.samples_dropped.inc(lost))
