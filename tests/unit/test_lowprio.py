"""The drift computation's executor: a plain Python process at the lowest priority."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator

import pytest

from gateway.lowprio import LowPriorityProcess


@pytest.fixture
def executor() -> Iterator[LowPriorityProcess]:
    pool = LowPriorityProcess()
    yield pool
    pool.shutdown()


def test_calls_run_in_a_nice_19_process_of_their_own(executor: LowPriorityProcess) -> None:
    assert executor.submit(math.factorial, 10).result(timeout=30) == 3_628_800
    child = executor.submit(os.getpid).result(timeout=30)
    assert child != os.getpid()
    assert executor.submit(os.nice, 0).result(timeout=30) == 19
    assert executor.submit(os.getsid, 0).result(timeout=30) == child  # its own session


def test_errors_come_back_and_a_dead_process_is_replaced(executor: LowPriorityProcess) -> None:
    with pytest.raises(ValueError, match="invalid literal"):
        executor.submit(int, "x").result(timeout=30)
    first = executor.submit(os.getpid).result(timeout=30)
    with pytest.raises(EOFError):
        executor.submit(os._exit, 3).result(timeout=30)  # dies without answering
    second = executor.submit(os.getpid).result(timeout=30)
    assert second != first


def test_shutdown_ends_the_process() -> None:
    pool = LowPriorityProcess()
    pid = pool.submit(os.getpid).result(timeout=30)
    pool.shutdown()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(os.getpid)


def test_shutdown_cancels_calls_not_started() -> None:
    pool = LowPriorityProcess()
    running = pool.submit(time.sleep, 1)
    waiting = pool.submit(os.getpid)  # queued behind the sleep
    pool.shutdown(wait=False, cancel_futures=True)
    assert waiting.cancelled()
    with contextlib.suppress(Exception):  # the sleep itself may end cancelled or killed
        running.result(timeout=30)
