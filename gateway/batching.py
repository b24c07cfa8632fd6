"""Adaptive micro-batching: concurrent single-object calls become one device batch.

A :class:`Batcher` runs a batch in its executor thread while the next accumulates (``in_flight``
batches at a time, one by default; two where the batch waits on a device elsewhere, so that the
next one is preprocessed meanwhile). A batch closes when it reaches ``max_batch_size`` or when the
oldest item has waited ``max_wait_s`` — and, whenever a batch is running, everything that arrived
meanwhile goes out together as soon as a slot is free (that is the adaptive part: the heavier
the load, the bigger the batches, with no extra waiting). Nothing is dropped to meet a latency
estimate: items wait their turn, and only when the queue itself is full does :meth:`submit`
refuse new work with :class:`~gateway.errors.Overloaded` (503 with Retry-After, gRPC
``RESOURCE_EXHAUSTED``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gateway.errors import Overloaded

log = logging.getLogger(__name__)
I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741


@dataclass
class _Pending(Generic[I, O]):
    item: I
    future: asyncio.Future[O]
    enqueued: float = field(default_factory=time.perf_counter)


def take_batch(
    pending: collections.deque[_Pending[I, O]],
    max_batch_size: int,
    weight: Callable[[I], int] | None = None,
) -> list[_Pending[I, O]]:
    """Pop items, oldest first, while their total weight (default: one each) stays within
    ``max_batch_size``; the first item always goes, whatever its weight."""
    if weight is None:
        return [pending.popleft() for _ in range(min(max_batch_size, len(pending)))]
    batch = [pending.popleft()]
    total = weight(batch[0].item)
    while pending and total + weight(pending[0].item) <= max_batch_size:
        total += weight(pending[0].item)
        batch.append(pending.popleft())
    return batch


def check_outputs(inputs: Sequence[object], outputs: Sequence[object]) -> None:
    if len(outputs) != len(inputs):
        raise RuntimeError(
            f"batch function returned {len(outputs)} answers for {len(inputs)} inputs"
        )


@dataclass(frozen=True)
class BatchStats:
    """What one batch did, for metrics: its size, how long its oldest item queued, run time."""

    size: int
    oldest_wait_s: float
    run_s: float
    queued_after: int


class Batcher(Generic[I, O]):
    def __init__(
        self,
        run_batch: Callable[[list[I]], Sequence[O]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[BatchStats], None] | None = None,
        weight: Callable[[I], int] | None = None,
        in_flight: int = 1,
        thread_name: str = "device",
        on_full: Callable[[bool], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < max_batch_size or in_flight < 1:
            raise ValueError("need 1 <= max_batch_size <= max_queue and in_flight >= 1")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.weight = weight
        self._pending: collections.deque[_Pending[I, O]] = collections.deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix=thread_name)
        self._slots = asyncio.Semaphore(in_flight)
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Future[Sequence[O]]] = set()
        self._batch_s = 0.001  # running estimate of one batch's time, for Retry-After
        self.on_full = on_full  # told when the queue fills up (True) and has room again (False)
        self.full = False

    @property
    def queued(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far is answered, so :meth:`stop` loses nothing."""
        deadline = time.perf_counter() + timeout
        while (self._pending or self._batches) and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for batch in list(self._batches):
            batch.cancel()
        for entry in self._pending:
            if not entry.future.done():
                entry.future.set_exception(RuntimeError("server is shutting down"))
        self._pending.clear()
        self._tell_full()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _count(self) -> int:
        if self.weight is None:
            return len(self._pending)
        return sum(self.weight(e.item) for e in self._pending)

    def _retry_after(self) -> float:
        batches_ahead = len(self._pending) / self.max_batch_size + 1
        return max(1.0, round(batches_ahead * self._batch_s, 1))

    def _tell_full(self) -> None:
        """Tell ``on_full`` when the queue's fullness (what :meth:`check_room` refuses on) has
        changed: a transport that sheds before reading a request learns it once, not per call."""
        full = len(self._pending) >= self.max_queue
        if full != self.full:
            self.full = full
            if self.on_full is not None:
                try:
                    self.on_full(full)
                except Exception:  # a listener never fails a request
                    log.exception("queue listener failed")

    def overload(self) -> Overloaded:
        """The refusal of a request that finds the queue full."""
        return Overloaded(len(self._pending), self.max_queue, self._retry_after())

    def check_room(self) -> None:
        """Raise :class:`Overloaded` while the queue is full: a caller sheds a request before it
        spends anything (reading, parsing, validating) on one that would be refused anyway."""
        if len(self._pending) >= self.max_queue:
            raise self.overload()

    async def submit(self, items: Sequence[I]) -> list[O]:
        """Queue ``items`` (one or many) and wait for their answers, in order. Refused while
        they would take the queue past its limit, unless it is empty (a request larger than the
        limit would otherwise never be answered)."""
        if self._pending and len(self._pending) + len(items) > self.max_queue:
            raise Overloaded(len(self._pending), self.max_queue, self._retry_after())
        loop = asyncio.get_running_loop()
        entries = [_Pending[I, O](item, loop.create_future()) for item in items]
        self._pending.extend(entries)
        self._wake.set()
        if len(self._pending) >= self.max_queue:
            self._tell_full()
        if len(entries) == 1:  # a single object, the common case: no gathering future needed
            return [await entries[0].future]
        return list(await asyncio.gather(*(e.future for e in entries)))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()  # while every slot is busy, the next batch keeps filling
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            # Straight to the batch thread, and answered from its done callback: no task to
            # schedule in between. Each event-loop turn a batch waits for is a turn of every
            # connection's work, which under a flood of requests is most of its latency.
            started = time.perf_counter()
            running = loop.run_in_executor(self._executor, self.run_batch, [e.item for e in batch])
            self._batches.add(running)
            running.add_done_callback(functools.partial(self._answer, batch, started))

    async def _next_batch(self) -> list[_Pending[I, O]]:
        """Wait until a batch is full or its oldest item is due, then take it."""
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            oldest = self._pending[0].enqueued
            remaining = self.max_wait_s - (time.perf_counter() - oldest)
            if self._count() < self.max_batch_size and remaining > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
                if self._count() < self.max_batch_size and (
                    time.perf_counter() - oldest < self.max_wait_s
                ):
                    continue  # more arrived but the batch is neither full nor due: keep waiting
            batch = take_batch(self._pending, self.max_batch_size, self.weight)
            if self.full:
                self._tell_full()
            batch = [e for e in batch if not e.future.done()]  # callers that gave up
            if batch:
                return batch

    def _answer(
        self, batch: list[_Pending[I, O]], started: float, running: asyncio.Future[Sequence[O]]
    ) -> None:
        """Give each caller of ``batch`` its output, or the batch's error."""
        self._batches.discard(running)
        self._slots.release()
        run_s = time.perf_counter() - started
        self._batch_s = 0.8 * self._batch_s + 0.2 * run_s
        try:
            outputs = running.result()
            check_outputs(batch, outputs)
        except BaseException as exc:  # every caller of the batch gets the error
            error = RuntimeError("server is shutting down") if running.cancelled() else exc
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(error)
            return
        for entry, output in zip(batch, outputs, strict=True):
            if not entry.future.done():
                entry.future.set_result(output)
        if self.on_batch is not None:
            stats = BatchStats(len(batch), started - batch[0].enqueued, run_s, self.queued)
            try:
                self.on_batch(stats)
            except Exception:  # metrics never fail a request
                log.exception("batch callback failed")
