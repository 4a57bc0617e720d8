"""Deadlines with an injected clock: estimates, admission (local / 503), prompt expiry, Triton parameters."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from scheduler_support import BEST_EFFORT, SAFETY, STANDARD, FakeClock, FixedTimes, Runner, qk, rows, settle

from edge_agent.http.errors import error_response
from edge_agent.scheduler import Expired, PriorityScheduler, ServiceTimes
from edge_agent.serving.admission import Admission, Rejected, budget_s, effective_rank
from protocols.pipeline import PipelineSpec


def test_service_times_seed_interpolate_and_ewma() -> None:
    times = ServiceTimes(alpha=0.5)
    assert times.batch_s(qk("m"), 4) > 0  # a default before any measurement
    times.observe(qk("m"), 1, 0.010)  # cold first run
    times.observe(qk("m"), 1, 0.001)  # seeding keeps the fastest of the first runs
    times.observe(qk("m"), 8, 0.008)
    assert times.batch_s(qk("m"), 1) == pytest.approx(0.001)
    assert times.batch_s(qk("m"), 4) == pytest.approx(0.001 + 0.007 * 3 / 7)  # interpolated
    assert times.batch_s(qk("m"), 16) == pytest.approx(0.016)  # linear beyond the largest measured
    for _ in range(2):
        times.observe(qk("m"), 1, 0.001)
    times.observe(qk("m"), 1, 0.003)  # now an EWMA
    assert times.batch_s(qk("m"), 1) == pytest.approx(0.002)
    times.forget(qk("m"))
    assert times.snapshot() == {}


def test_triton_priority_lowers_but_never_raises_the_class() -> None:
    assert effective_rank("standard", 0) == STANDARD  # 0 = the pipeline's class
    assert effective_rank("standard", 1) == STANDARD  # 1 = highest, but never above the pipeline
    assert effective_rank("standard", 3) == BEST_EFFORT
    assert effective_rank("safety", 0) == SAFETY
    assert effective_rank("safety", 2) == STANDARD
    assert effective_rank("best_effort", 1) == BEST_EFFORT
    assert effective_rank("best_effort", 99) == BEST_EFFORT
    assert budget_s(500, None) == pytest.approx(0.5)
    assert budget_s(500, 0) == pytest.approx(0.5)  # Triton: 0 = no timeout
    assert budget_s(500, 20_000) == pytest.approx(0.02)
    assert budget_s(50, 2_000_000) == pytest.approx(0.05)  # a timeout never lengthens the deadline


async def test_estimate_counts_running_batch_queued_work_at_equal_or_higher_priority_and_own_batch() -> None:
    log: list[tuple[str, int, str]] = []
    gate = threading.Event()
    clock = FakeClock()
    times = FixedTimes({qk("m"): {1: 0.001, 4: 0.003}, qk("n"): {1: 0.002, 2: 0.003}})
    scheduler = PriorityScheduler(depth=1, clock=clock, estimates=times, safety_lane="shared")
    scheduler.add_queue(qk("m"), Runner(log, "m", gate), ("x",), max_batch_size=4)
    scheduler.add_queue(qk("n"), Runner(log, "n", gate), ("x",), max_batch_size=2)
    running = scheduler.submit(qk("m"), rows(4), 4, rank=STANDARD)  # 3 ms, starts now
    await settle()
    clock.now += 0.001  # 1 ms into it: 2 ms left
    queued = [
        scheduler.submit(qk("m"), rows(4), 4, rank=STANDARD),  # 3 ms
        scheduler.submit(qk("m"), rows(1), 1, rank=STANDARD),  # with the next: 2 rows of m
        scheduler.submit(qk("n"), rows(1), 1, rank=SAFETY),  # 2 ms, higher class: ahead of everyone
        scheduler.submit(qk("n"), rows(2), 2, rank=BEST_EFFORT),  # lower class: not ahead of standard
    ]
    await settle()
    # standard m, 2 rows: 2 (running) + 2 (safety n) + 3 (m x4) + [1 row queued + own 2 rows = 3 rows of m]
    m3 = 0.001 + 0.002 * 2 / 3
    assert scheduler.estimate_s(qk("m"), 2, STANDARD) == pytest.approx(0.002 + 0.002 + 0.003 + m3)
    # best effort n, 1 row: all of the above (m: 4 + 1 rows) + [2 queued + own 1 = 3 rows of n: 2 + 1]
    ahead = 0.002 + 0.002 + 0.003 + 0.001
    assert scheduler.estimate_s(qk("n"), 1, BEST_EFFORT) == pytest.approx(ahead + 0.003 + 0.002)
    # safety n, 1 row: the running batch, then 2 rows of n with the queued one.
    assert scheduler.estimate_s(qk("n"), 1, SAFETY) == pytest.approx(0.002 + 0.003)
    gate.set()
    await asyncio.gather(running, *queued)
    await scheduler.aclose()


async def test_admission_rejects_at_once_when_the_deadline_cannot_be_met() -> None:
    log: list[tuple[str, int, str]] = []
    gate = threading.Event()
    clock = FakeClock()
    scheduler = PriorityScheduler(depth=1, clock=clock, estimates=FixedTimes({qk("m"): {1: 0.010, 8: 0.040}}))
    scheduler.add_queue(qk("m"), Runner(log, "m", gate), ("x",), max_batch_size=8)
    admission = Admission(scheduler, None, margin_s=0.001)
    pipeline = PipelineSpec(name="p", model="m", priority="best_effort", deadline_ms=100)
    busy = [scheduler.submit(qk("m"), rows(8), 8, rank=BEST_EFFORT) for _ in range(2)]  # 80 ms of work
    await settle()

    async def request(deadline_s: float) -> asyncio.Task[object]:
        task = asyncio.ensure_future(
            admission.run(
                pipeline, qk("m"), rows(1), 1, requested=None, rank=BEST_EFFORT, deadline=clock.now + deadline_s
            )
        )
        await settle()
        return task

    rejected = await request(0.085)  # 80 ms + 10 ms own > 85 ms
    assert rejected.done()  # at once, not after waiting
    error = rejected.exception()
    assert isinstance(error, Rejected)
    response = error_response(error)
    assert response.status == 503 and int(response.headers["Retry-After"]) >= 1
    accepted = await request(0.100)  # 91 ms <= 100 ms: queued locally
    assert not accepted.done() and scheduler.queued(BEST_EFFORT) == 2
    gate.set()
    await asyncio.gather(*busy)
    served = await accepted
    assert served.where == "local"  # type: ignore[attr-defined]
    assert log == [("m", 8, "lane-cpu_0"), ("m", 8, "lane-cpu_0"), ("m", 1, "lane-cpu_0")]
    await scheduler.aclose()


async def test_shed_before_the_body_only_when_no_class_queue_or_deadline_could_take_it() -> None:
    log: list[tuple[str, int, str]] = []
    gate = threading.Event()
    clock = FakeClock()
    scheduler = PriorityScheduler(
        depth=1, clock=clock, estimates=FixedTimes({qk("m"): {1: 0.010, 8: 0.040}}), limits=(4, 4, 1)
    )
    scheduler.add_queue(qk("m"), Runner(log, "m", gate), ("x",), max_batch_size=8)
    admission = Admission(scheduler, None, margin_s=0.001)
    best_effort = PipelineSpec(name="be", model="m", priority="best_effort", deadline_ms=1000)
    standard = PipelineSpec(name="std", model="m", priority="standard", deadline_ms=1000)
    safety = PipelineSpec(name="s", model="m", priority="safety", deadline_ms=1)
    assert admission.shed(best_effort, qk("m"), clock.now + 1.0) is None  # room and time
    busy = [scheduler.submit(qk("m"), rows(8), 8, rank=BEST_EFFORT)]
    await settle()  # running
    busy.append(scheduler.submit(qk("m"), rows(8), 8, rank=BEST_EFFORT))  # queued: best_effort is full
    full = admission.shed(best_effort, qk("m"), clock.now + 1.0)
    assert isinstance(full, Rejected) and "queue full" in str(full)
    # A standard request may lower itself to best_effort, but its own class still has room and time.
    assert admission.shed(standard, qk("m"), clock.now + 1.0) is None
    late = admission.shed(standard, qk("m"), clock.now + 0.05)  # 40 + 40 + 10 ms of work > 50 ms
    assert isinstance(late, Rejected) and error_response(late).status == 503
    assert admission.shed(safety, qk("m"), clock.now + 0.001) is None  # safety always gets the full check
    gate.set()
    await asyncio.gather(*busy)
    await scheduler.aclose()


async def test_expired_requests_are_answered_promptly_by_a_timer_and_never_run() -> None:
    log: list[tuple[str, int, str]] = []
    gate = threading.Event()
    clock = FakeClock()
    scheduler = PriorityScheduler(depth=1, clock=clock, safety_lane="shared")
    scheduler.add_queue(qk("m"), Runner(log, "m", gate), ("x",), max_batch_size=1)
    running = scheduler.submit(qk("m"), rows(1, 0.0), 1, rank=STANDARD)
    await settle()
    doomed = scheduler.submit(qk("m"), rows(1, 1.0), 1, rank=STANDARD, deadline=clock.now + 0.050)
    later = scheduler.submit(qk("m"), rows(1, 2.0), 1, rank=STANDARD, deadline=clock.now + 10.0)
    await settle()
    clock.advance(0.049)
    await settle()
    assert not doomed.done()
    clock.advance(0.002)  # the deadline passes while the lane is still busy with the first batch
    await settle()
    assert doomed.done() and isinstance(doomed.exception(), Expired)
    assert error_response(doomed.exception()).status == 503  # type: ignore[arg-type]
    assert scheduler.queue_rows() == {qk("m"): 1}
    gate.set()
    await asyncio.gather(running, later)
    assert [int(n) for _, n, _ in log] == [1, 1]
    np.testing.assert_array_equal((await later)["y"], [[3.0]])  # the doomed request never ran
    await scheduler.aclose()


async def test_expired_at_batch_cut_never_runs() -> None:
    log: list[tuple[str, int, str]] = []
    gate = threading.Event()
    clock = FakeClock()
    scheduler = PriorityScheduler(depth=1, clock=clock, safety_lane="shared")
    scheduler.add_queue(qk("m"), Runner(log, "m", gate), ("x",), max_batch_size=4)
    running = scheduler.submit(qk("m"), rows(1), 1)
    await settle()
    doomed = scheduler.submit(qk("m"), rows(1), 1, deadline=clock.now + 0.010)
    fine = scheduler.submit(qk("m"), rows(1), 1, deadline=clock.now + 5.0)
    clock.now += 0.020  # time passes without the timer firing (a busy loop): the cut must check too
    gate.set()
    await asyncio.gather(running, fine)
    assert isinstance(doomed.exception(), Expired)
    assert [n for _, n, _ in log] == [1, 1]
    await scheduler.aclose()
