from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gateway.batching import Batcher, BatchStats
from gateway.errors import Overloaded

pytestmark = pytest.mark.anyio


def make(run, **kw) -> tuple[Batcher[int, int], list[BatchStats]]:
    stats: list[BatchStats] = []
    options = {"max_batch_size": 16, "max_wait_s": 0.005, "max_queue": 256} | kw
    return Batcher(run, on_batch=stats.append, **options), stats


async def test_concurrent_calls_become_batches_with_the_right_answers() -> None:
    batcher, stats = make(lambda xs: [x * 10 for x in xs])
    batcher.start()
    answers = await asyncio.gather(*(batcher.submit([i]) for i in range(50)))
    await batcher.stop()
    assert answers == [[i * 10] for i in range(50)]
    assert sum(s.size for s in stats) == 50
    assert max(s.size for s in stats) == 16
    assert len(stats) < 50


async def test_a_lone_call_waits_at_most_the_window() -> None:
    batcher, stats = make(lambda xs: xs, max_wait_s=0.02)
    batcher.start()
    started = time.perf_counter()
    assert await batcher.submit([7]) == [7]
    assert time.perf_counter() - started < 0.5
    await batcher.stop()
    assert stats[0].size == 1


async def test_bulk_calls_are_split_and_keep_their_order() -> None:
    batcher, stats = make(lambda xs: [-x for x in xs])
    batcher.start()
    assert await batcher.submit(list(range(40))) == [-x for x in range(40)]
    await batcher.stop()
    assert [s.size for s in stats] == [16, 16, 8]


async def test_a_failing_batch_fails_its_callers_only() -> None:
    def run(xs: list[int]) -> list[int]:
        if 13 in xs:
            raise ValueError("bad item")
        return xs

    batcher, _ = make(run, max_batch_size=1, max_queue=8)
    batcher.start()
    with pytest.raises(ValueError, match="bad item"):
        await batcher.submit([13])
    assert await batcher.submit([1]) == [1]
    await batcher.stop()


async def test_answer_count_is_checked() -> None:
    batcher, _ = make(lambda xs: xs[:-1])
    batcher.start()
    with pytest.raises(RuntimeError, match="returned 1 answers for 2 inputs"):
        await batcher.submit([1, 2])
    await batcher.stop()


async def test_a_full_queue_refuses_with_retry_after_and_serves_the_rest() -> None:
    gate = threading.Event()

    def slow(xs: list[int]) -> list[int]:
        gate.wait(5)
        return xs

    batcher, _ = make(slow, max_batch_size=4, max_queue=8)
    batcher.start()
    first = asyncio.ensure_future(batcher.submit([0]))
    await asyncio.sleep(0.05)  # the first batch is on the device; the queue fills behind it
    queued = [asyncio.ensure_future(batcher.submit([i])) for i in range(1, 9)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as refused:
        await batcher.submit([99])
    assert refused.value.retry_after is not None
    assert refused.value.retry_after >= 1
    gate.set()
    assert await first == [0]
    assert [await q for q in queued] == [[i] for i in range(1, 9)]
    await batcher.stop()


async def test_a_broken_metrics_callback_does_not_fail_requests() -> None:
    def broken(stats: BatchStats) -> None:
        raise RuntimeError("metrics down")

    batcher: Batcher[int, int] = Batcher(
        lambda xs: xs, max_batch_size=4, max_wait_s=0.001, max_queue=8, on_batch=broken
    )
    batcher.start()
    assert await batcher.submit([1]) == [1]
    assert await batcher.submit([2]) == [2]
    await batcher.stop()


async def test_weighted_items_fill_a_batch_up_to_the_total_weight() -> None:
    seen: list[list[int]] = []

    def run(xs: list[int]) -> list[int]:
        seen.append(list(xs))
        time.sleep(0.01)  # let the rest queue behind the first batch
        return xs

    batcher, _ = make(run, max_batch_size=10, max_wait_s=0.0, weight=lambda x: x)
    batcher.start()
    sizes = [3, 4, 5, 12, 2, 2]
    answers = await asyncio.gather(*(batcher.submit([n]) for n in sizes))
    await batcher.stop()
    assert answers == [[n] for n in sizes]
    assert sorted(n for batch in seen for n in batch) == sorted(sizes)
    for batch in seen:  # within the limit, or a single item heavier than it
        assert sum(batch) <= 10 or len(batch) == 1
    assert any(len(batch) > 1 for batch in seen)


async def test_listeners_hear_once_when_the_queue_fills_and_when_it_has_room() -> None:
    heard: list[bool] = []
    release = threading.Event()

    def slow(xs: list[int]) -> list[int]:
        release.wait(5)
        return xs

    batcher, _ = make(slow, max_batch_size=4, max_queue=8, on_full=heard.append)
    batcher.start()
    first = asyncio.ensure_future(batcher.submit([0, 1, 2, 3]))  # runs, holding the thread
    await asyncio.sleep(0.05)
    waiting = [asyncio.ensure_future(batcher.submit([i])) for i in range(8)]
    await asyncio.sleep(0.05)
    assert heard == [True]
    assert batcher.full
    with pytest.raises(Overloaded):
        batcher.check_room()
    release.set()
    await asyncio.gather(first, *waiting)
    assert heard == [True, False]
    assert not batcher.full
    await batcher.stop()
