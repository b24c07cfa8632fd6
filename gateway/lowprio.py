"""An executor whose work runs in one plain Python process at the lowest CPU priority.

The drift computation imports Evidently (seconds of CPU) and holds the GIL while it computes, so
it runs in a process of its own. ``ProcessPoolExecutor`` with ``spawn`` would start that process
by re-importing the Bento worker's main module (BentoML, the service, torch, MLflow) at normal
priority, before any initializer can lower it. This process starts as ``python -m
gateway.lowprio``, lowers its priority before it imports anything, and only then loads what each
call needs: pandas and Evidently, about 4.5 s of CPU once, then 0.02 s per window.

Calls go one at a time over the child's stdin/stdout as pickles in :mod:`gateway.framing`'s
frames (functions by reference, so they must be importable module-level functions). A child that
dies fails the call in flight; the next call starts a new one.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import IO, Any

from gateway import framing

_Call = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


def lowest_priority() -> None:
    """Nice 19, in a session of its own whose autogroup is lowered too: where the kernel shares
    the CPU between sessions first (autogroup), and every Bento worker is a session, plain nice
    would only rank this process inside its own session."""
    with contextlib.suppress(OSError):
        os.nice(19)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text("19")


def _send(stream: IO[bytes], payload: Any) -> None:
    framing.write(stream, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def _receive(stream: IO[bytes]) -> Any:
    """The next pickle; ``EOFError`` where the other end closed its pipe, before or within it."""
    body = framing.read(stream)
    if body is None:
        raise EOFError("the low-priority process ended")
    return pickle.loads(body)


class LowPriorityProcess(Executor):
    """``submit(fn, *args)`` runs ``fn`` in the low-priority process; calls queue in order."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="low-priority-calls", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self._closed:
            raise RuntimeError("cannot submit after shutdown")
        if kwargs:
            raise TypeError("LowPriorityProcess takes positional arguments only")
        future: Future[Any] = Future()
        self._calls.put((future, fn, args))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        if cancel_futures:  # calls not started yet end cancelled, not forgotten
            with contextlib.suppress(queue.Empty):
                while (call := self._calls.get_nowait()) is not None:
                    call[0].cancel()
        self._calls.put(None)
        if wait:
            self._thread.join(timeout=10)
        self._stop_process()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                process = self._running()
                assert process.stdin is not None
                assert process.stdout is not None
                _send(process.stdin, (fn, args))
                ok, value = _receive(process.stdout)
            except BaseException as exc:  # the process died or could not be reached
                self._stop_process()
                future.set_exception(exc)
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        self._stop_process()

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "gateway.lowprio"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,  # a session (and autogroup) of its own
            )
        return self._process

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


def main() -> None:
    """The child: answer ``(fn, args)`` calls until stdin closes. Anything the work prints goes
    to stderr, keeping stdout for answers."""
    lowest_priority()
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    requests = sys.stdin.buffer
    while True:
        try:
            fn, args = _receive(requests)
        except EOFError:
            return
        try:
            answer: tuple[bool, Any] = (True, fn(*args))
        except Exception as exc:
            answer = (False, exc)
        try:
            _send(answers, answer)
        except (pickle.PicklingError, TypeError, AttributeError, framing.FrameTooLarge) as exc:
            _send(answers, (False, RuntimeError(f"the answer could not be sent: {exc!r}")))


if __name__ == "__main__":
    main()
