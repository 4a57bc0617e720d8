"""The dynamic scheduler: batch formation, max queue delay (injected clock), failure fan-out, cancellation."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from scheduler_support import FakeClock, qk

from edge_agent.errors import InferenceFailed, NotFound, Unavailable
from edge_agent.scheduler import PriorityScheduler, QueueKey

Arrays = Mapping[str, np.ndarray[Any, Any]]


class Recorder:
    """A runtime `run`: y = 2 * x, recording each batch's rows and thread."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.gate: threading.Event | None = None
        self.fail = False

    def __call__(self, inputs: Arrays) -> dict[str, np.ndarray[Any, Any]]:
        if self.gate is not None:
            self.gate.wait(5)
        self.threads.add(threading.current_thread().name)
        self.batches.append(int(inputs["x"].shape[0]))
        if self.fail:
            raise RuntimeError("boom")
        return {"y": inputs["x"] * 2}


def rows(n: int, start: float = 0.0) -> dict[str, np.ndarray[Any, Any]]:
    return {"x": np.arange(start, start + n, dtype=np.float32).reshape(n, 1)}


async def settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def test_whole_requests_up_to_max_batch_and_outputs_split_back() -> None:
    run = Recorder()
    scheduler = PriorityScheduler(depth=1)
    scheduler.add_queue(qk("m"), run, ("x",), max_batch_size=4)
    sizes = [1, 2, 3, 2, 1]
    futures = [scheduler.submit(qk("m"), rows(n, 10 * i), n) for i, n in enumerate(sizes)]
    results = await asyncio.gather(*futures)
    assert run.batches == [3, 3, 3]  # [1,2] [3] [2,1]: never split a request, never above 4
    for i, (n, out) in enumerate(zip(sizes, results, strict=True)):
        np.testing.assert_array_equal(out["y"], rows(n, 10 * i)["x"] * 2)
    assert run.threads == {"lane-cpu_0"}  # off the event loop, in the lane's one thread
    await scheduler.aclose()


async def test_idle_lane_dispatches_next_iteration_without_waiting() -> None:
    run = Recorder()
    clock = FakeClock()
    scheduler = PriorityScheduler(depth=1, clock=clock)
    scheduler.add_queue(qk("m"), run, ("x",), max_batch_size=8, max_queue_delay_s=0.0)
    first = [scheduler.submit(qk("m"), rows(1), 1) for _ in range(3)]
    await asyncio.gather(*first)
    assert run.batches == [3]  # submitted in the same loop iteration: one batch
    assert not clock.timers
    await scheduler.aclose()


async def test_max_queue_delay_with_injected_clock() -> None:
    run = Recorder()
    clock = FakeClock()
    scheduler = PriorityScheduler(depth=1, clock=clock)
    scheduler.add_queue(qk("m"), run, ("x",), max_batch_size=4, max_queue_delay_s=0.010)
    a = scheduler.submit(qk("m"), rows(1), 1)
    await settle()
    assert run.batches == [] and [t.when for t in clock.timers] == [pytest.approx(100.010)]
    clock.advance(0.005)
    b = scheduler.submit(qk("m"), rows(2), 2)
    await settle()
    assert run.batches == []  # still waiting for the batch to grow
    clock.advance(0.006)  # the oldest request has now waited max_queue_delay
    await asyncio.gather(a, b)
    assert run.batches == [3]
    # A full batch goes at once, delay or not.
    c = scheduler.submit(qk("m"), rows(4), 4)
    await c
    assert run.batches == [3, 4]
    await scheduler.aclose()


async def test_failed_batch_fails_every_future_in_it() -> None:
    run = Recorder()
    run.fail = True
    scheduler = PriorityScheduler(depth=1)
    scheduler.add_queue(qk("m"), run, ("x",), max_batch_size=8)
    futures = [scheduler.submit(qk("m"), rows(1), 1) for _ in range(4)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert run.batches == [4]
    for result in results:
        assert isinstance(result, InferenceFailed)
        assert isinstance(result.__cause__, RuntimeError)
    run.fail = False
    assert (await scheduler.submit(qk("m"), rows(1), 1))["y"].shape == (1, 1)  # the lane survives
    await scheduler.aclose()


async def test_cancelled_requests_are_skipped() -> None:
    run = Recorder()
    scheduler = PriorityScheduler(depth=1)
    scheduler.add_queue(qk("m"), run, ("x",), max_batch_size=8)
    futures = [scheduler.submit(qk("m"), rows(1, i), 1) for i in range(3)]
    futures[1].cancel()
    _, third = await asyncio.gather(futures[0], futures[2])
    assert run.batches == [2]
    np.testing.assert_array_equal(third["y"], [[4.0]])
    await scheduler.aclose()


async def test_loop_keeps_running_and_only_full_batches_are_pipelined() -> None:
    run = Recorder()
    run.gate = threading.Event()
    scheduler = PriorityScheduler(depth=2)
    scheduler.add_queue(qk("m"), run, ("x",), max_batch_size=2)
    first = scheduler.submit(qk("m"), rows(1), 1)
    await settle()
    assert scheduler.inflight == 1
    partial = scheduler.submit(qk("m"), rows(1), 1)
    await settle()
    assert scheduler.inflight == 1  # a partial batch waits for the lane
    full = scheduler.submit(qk("m"), rows(1), 1)  # now 2 rows queued: a full batch
    await settle()
    assert scheduler.inflight == 2  # while the loop still runs
    run.gate.set()
    await asyncio.gather(first, partial, full)
    assert run.batches == [1, 2]
    await scheduler.aclose()


async def test_models_share_the_lane_fifo_by_oldest_request() -> None:
    run = Recorder()
    scheduler = PriorityScheduler(depth=1)
    scheduler.add_queue(qk("a"), run, ("x",), max_batch_size=8)
    scheduler.add_queue(qk("b"), run, ("x",), max_batch_size=8)
    fa = scheduler.submit(qk("a"), rows(1), 1)
    fb = scheduler.submit(qk("b"), rows(2), 2)
    await asyncio.gather(fa, fb)
    assert run.batches == [1, 2]
    assert scheduler.queue_rows() == {qk("a"): 0, qk("b"): 0}
    await scheduler.aclose()


async def test_observer_sees_each_batch() -> None:
    seen: list[tuple[QueueKey, int]] = []
    scheduler = PriorityScheduler(depth=1, observer=lambda key, n, _s: seen.append((key, n)))
    scheduler.add_queue(qk("m"), Recorder(), ("x",), max_batch_size=8)
    await asyncio.gather(*(scheduler.submit(qk("m"), rows(1), 1) for _ in range(3)))
    assert seen == [(qk("m"), 3)]
    await scheduler.aclose()


async def test_remove_queue_drains_and_close_fails_queued() -> None:
    run = Recorder()
    run.gate = threading.Event()
    scheduler = PriorityScheduler(depth=1)
    scheduler.add_queue(qk("m"), run, ("x",), max_batch_size=1)
    running = scheduler.submit(qk("m"), rows(1), 1)
    queued = scheduler.submit(qk("m"), rows(1), 1)
    removal = asyncio.create_task(scheduler.remove_queue(qk("m")))
    await settle()
    with pytest.raises(NotFound):
        scheduler.submit(qk("m"), rows(1), 1)
    run.gate.set()
    await removal
    assert running.done() and queued.done() and run.batches == [1, 1]

    scheduler.add_queue(qk("n"), run, ("x",), max_batch_size=1)
    run.gate = threading.Event()
    busy = scheduler.submit(qk("n"), rows(1), 1)
    waiting = scheduler.submit(qk("n"), rows(1), 1)
    await settle()
    closing = asyncio.create_task(scheduler.aclose())
    await settle()
    run.gate.set()
    await closing
    assert isinstance(waiting.exception(), Unavailable)
    assert busy.result()["y"].shape == (1, 1)
    with pytest.raises(Unavailable):
        scheduler.submit(qk("n"), rows(1), 1)


async def test_finished_requests_are_freed_before_their_deadline() -> None:
    """A served request's inputs (often views of a large HTTP body) must not live until its deadline."""
    scheduler = PriorityScheduler(depth=1)
    scheduler.add_queue(qk("m"), Recorder(), ("x",), max_batch_size=4)
    deadline = scheduler.now() + 3600.0  # far away: only the heap's own bookkeeping could keep them alive
    inputs = [rows(1, i) for i in range(2000)]
    watched = [weakref.ref(x["x"]) for x in inputs]
    for chunk in range(0, 2000, 100):
        futures = [scheduler.submit(qk("m"), x, 1, deadline=deadline) for x in inputs[chunk : chunk + 100]]
        await asyncio.gather(*futures)
    del inputs, futures
    gc.collect()
    assert sum(ref() is not None for ref in watched) == 0
    assert len(scheduler._expiry) < 600  # compacted: bounded by what is queued, not by what was served
    await scheduler.aclose()
