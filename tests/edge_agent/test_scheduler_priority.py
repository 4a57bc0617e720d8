"""The priority scheduler with an injected clock: strict priority across models, FIFO, batching, bounds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest
from scheduler_support import BEST_EFFORT, SAFETY, STANDARD, FakeClock, FixedTimes, Runner, qk, rows, settle

from edge_agent.http.errors import error_response
from edge_agent.scheduler import PriorityScheduler, QueueFull


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll (real time) until the lane threads have done what `predicate` checks."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.002)


def lane_with_blocker(scheduler: PriorityScheduler, log: list[tuple[str, int, str]], gate: threading.Event) -> None:
    """A model `block` whose batches wait on `gate`: submit one to keep the main lane busy."""
    scheduler.add_queue(qk("block"), Runner(log, "block", gate), ("x",), max_batch_size=8)


async def test_strict_priority_across_models_and_fifo_within_class() -> None:
    log: list[tuple[str, int, str]] = []
    gate = threading.Event()
    scheduler = PriorityScheduler(depth=1, clock=FakeClock(), safety_lane="shared")
    lane_with_blocker(scheduler, log, gate)
    for key in ("a", "b", "c"):
        scheduler.add_queue(qk(key), Runner(log, key), ("x",), max_batch_size=1)
    blocker = scheduler.submit(qk("block"), rows(1), 1, rank=BEST_EFFORT)
    await settle()
    order = [
        ("a", BEST_EFFORT),
        ("b", STANDARD),
        ("c", BEST_EFFORT),
        ("a", STANDARD),
        ("c", SAFETY),
        ("b", SAFETY),
    ]
    futures = [scheduler.submit(qk(key), rows(1), 1, rank=rank) for key, rank in order]
    gate.set()
    await asyncio.gather(blocker, *futures)
    ran = [tag for tag, _, _ in log[1:]]
    # Safety first (FIFO: c then b), then standard (b then a), then best effort (a then c): across models.
    assert ran == ["c", "b", "b", "a", "a", "c"]
    await scheduler.aclose()


async def test_batches_form_within_a_model_and_class_never_across() -> None:
    log: list[tuple[str, int, str]] = []
    gate = threading.Event()
    scheduler = PriorityScheduler(depth=1, clock=FakeClock(), safety_lane="shared")
    lane_with_blocker(scheduler, log, gate)
    scheduler.add_queue(qk("m"), Runner(log, "m"), ("x",), max_batch_size=4)
    scheduler.add_queue(qk("n"), Runner(log, "n"), ("x",), max_batch_size=4)
    blocker = scheduler.submit(qk("block"), rows(1), 1, rank=STANDARD)
    await settle()
    low = [scheduler.submit(qk("m"), rows(1, float(i)), 1, rank=BEST_EFFORT) for i in range(6)]
    std = [scheduler.submit(qk("m"), rows(1, 10.0 + i), 1, rank=STANDARD) for i in range(2)]
    other = scheduler.submit(qk("n"), rows(2), 2, rank=STANDARD)
    gate.set()
    results = await asyncio.gather(*low, *std, other)
    await blocker
    assert [(tag, n) for tag, n, _ in log[1:]] == [("m", 2), ("n", 2), ("m", 4), ("m", 2)]
    for i, out in enumerate(results[:6]):
        np.testing.assert_array_equal(out["y"], [[i + 1.0]])  # each caller gets its own rows back
    assert scheduler.queue_rows() == {qk("block"): 0, qk("m"): 0, qk("n"): 0}
    await scheduler.aclose()


async def test_bounded_class_queues_answer_503_with_retry_after() -> None:
    log: list[tuple[str, int, str]] = []
    gate = threading.Event()
    scheduler = PriorityScheduler(depth=1, clock=FakeClock(), limits=(2, 2, 1), safety_lane="shared")
    lane_with_blocker(scheduler, log, gate)
    scheduler.add_queue(qk("m"), Runner(log, "m"), ("x",), max_batch_size=1)
    blocker = scheduler.submit(qk("block"), rows(1), 1, rank=STANDARD)
    await settle()
    queued = scheduler.submit(qk("m"), rows(1), 1, rank=BEST_EFFORT)
    assert scheduler.queued(BEST_EFFORT) == 1 and not scheduler.has_room(BEST_EFFORT)
    with pytest.raises(QueueFull) as info:
        scheduler.submit(qk("m"), rows(1), 1, rank=BEST_EFFORT)
    response = error_response(info.value)
    assert response.status == 503 and int(response.headers["Retry-After"]) >= 1
    # Other classes have their own bound.
    standard = [scheduler.submit(qk("m"), rows(1), 1, rank=STANDARD) for _ in range(2)]
    with pytest.raises(QueueFull):
        scheduler.submit(qk("m"), rows(1), 1, rank=STANDARD)
    gate.set()
    await asyncio.gather(blocker, queued, *standard)
    assert scheduler.has_room(BEST_EFFORT) and scheduler.queued(STANDARD) == 0
    await scheduler.aclose()


async def test_dedicated_safety_lane_never_waits_behind_a_running_batch() -> None:
    log: list[tuple[str, int, str]] = []
    gate = threading.Event()
    scheduler = PriorityScheduler(depth=2, clock=FakeClock(), safety_lane="dedicated")
    lane_with_blocker(scheduler, log, gate)
    scheduler.add_queue(qk("s"), Runner(log, "s"), ("x",), max_batch_size=8)
    busy = [scheduler.submit(qk("block"), rows(8), 8, rank=BEST_EFFORT) for _ in range(3)]
    await settle()
    assert scheduler.inflight == 2  # running + pre-handed on the main lane
    safety = scheduler.submit(qk("s"), rows(1), 1, rank=SAFETY)
    out = await asyncio.wait_for(safety, 5)  # answered while every best-effort batch is still blocked
    np.testing.assert_array_equal(out["y"], [[1.0]])
    assert log == [("s", 1, "lane-cpu-safety_0")]
    gate.set()
    await asyncio.gather(*busy)
    assert {thread for tag, _, thread in log if tag == "block"} == {"lane-cpu_0"}
    await scheduler.aclose()


async def test_shared_lane_bound_no_prehand_and_capped_batches_while_safety_active() -> None:
    log: list[tuple[str, int, str]] = []
    gate = threading.Event()
    clock = FakeClock()
    # Service times: 1 row 0.5 ms, 8 rows 4 ms (linear between), so 2 ms of work is 4 rows.
    times = FixedTimes({qk("block"): {1: 0.0005, 8: 0.004}})
    scheduler = PriorityScheduler(
        depth=2, clock=clock, estimates=times, safety_lane="shared", safety_max_wait_s=0.002, safety_window_s=1.0
    )
    lane_with_blocker(scheduler, log, gate)
    scheduler.add_queue(qk("s"), Runner(log, "s"), ("x",), max_batch_size=8)
    # Safety inactive: full batches, pipelined two deep.
    quiet = [scheduler.submit(qk("block"), rows(8), 8, rank=BEST_EFFORT) for _ in range(3)]
    await settle()
    assert scheduler.inflight == 2
    gate.set()
    await asyncio.gather(*quiet)
    gate.clear()
    log.clear()
    # A safety request makes safety traffic active for safety_window_s.
    await scheduler.submit(qk("s"), rows(1), 1, rank=SAFETY)
    busy = [scheduler.submit(qk("block"), rows(1), 1, rank=BEST_EFFORT) for _ in range(16)]
    await settle()
    assert scheduler.inflight == 1  # no lower-class batch is pre-handed: a safety arrival waits for one batch only
    safety = scheduler.submit(qk("s"), rows(1), 1, rank=SAFETY)
    await settle()
    assert scheduler.inflight == 2  # safety is handed right behind the running batch
    gate.set()
    await asyncio.gather(safety, *busy)
    tags = [(tag, n) for tag, n, _ in log]
    assert tags[0] == ("s", 1)
    assert tags[1] == ("block", 4) and tags[2] == ("s", 1)  # the running capped batch, then safety
    assert all(n <= 4 for tag, n in tags if tag == "block")  # every lower batch capped to ~2 ms
    # Once safety has been quiet for the window, batches are full again.
    clock.advance(1.5)
    log.clear()
    await asyncio.gather(*(scheduler.submit(qk("block"), rows(1), 1, rank=BEST_EFFORT) for _ in range(8)))
    assert [n for _, n, _ in log] == [8]
    await scheduler.aclose()


async def test_lower_class_never_overtakes_a_waiting_higher_class() -> None:
    log: list[tuple[str, int, str]] = []
    gate = threading.Event()
    scheduler = PriorityScheduler(depth=2, clock=FakeClock(), safety_lane="dedicated")
    lane_with_blocker(scheduler, log, gate)
    scheduler.add_queue(qk("m"), Runner(log, "m"), ("x",), max_batch_size=4)
    blocker = scheduler.submit(qk("block"), rows(1), 1, rank=STANDARD)
    await settle()
    partial = scheduler.submit(qk("m"), rows(1), 1, rank=STANDARD)  # partial: waits for the lane
    full = [scheduler.submit(qk("m"), rows(4), 4, rank=BEST_EFFORT)]  # full, but lower class
    await settle()
    assert scheduler.inflight == 1  # the full best-effort batch is not pre-handed ahead of standard
    gate.set()
    await asyncio.gather(blocker, partial, *full)
    assert [(tag, n) for tag, n, _ in log] == [("block", 1), ("m", 1), ("m", 4)]
    await scheduler.aclose()
