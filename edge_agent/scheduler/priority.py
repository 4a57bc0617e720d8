"""The scheduler of one accelerator: strict priority across all models, batching within a model.

Policy (docs/scheduling.md): requests wait in one FIFO per (model, class). When a lane has room, the
highest class with a waiting request goes first (safety > standard > best_effort, across models); within a
class the oldest head wins. A queue is dispatched as soon as it holds a full batch, or its oldest request
has waited `max_queue_delay` while the lane is idle. Up to `depth` batches may be handed to a lane's thread
at once, but only the first may be partial (safety excepted), so pipelining never shrinks batches. A lower
class never overtakes a waiting higher class on the same lane.

Safety bound: with `safety_lane="dedicated"` safety-class batches run on a lane of their own, so they never
queue behind other work; with `"shared"`, while safety traffic is active, lower-class batches are capped
to `safety_max_wait_s` of estimated run time and never pre-handed, so a safety request waits for at most
the one batch already running.

Deadlines: a request whose deadline passes while queued is answered `Expired` (503) by a timer at once
(not when the lane frees up, see expiry.py) and never runs; the batch cut checks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Literal

import numpy as np

from edge_agent.errors import InferenceFailed, NotFound, Unavailable
from edge_agent.scheduler.estimates import ServiceTimes
from edge_agent.scheduler.expiry import Clock, ExpiryTimer, Timer
from edge_agent.scheduler.lane import Lane
from edge_agent.scheduler.queue import CLASSES, ModelQueue, QueueKey, Request, RunBatch, Tensors, run_batch

__all__ = ["BatchObserver", "Clock", "PriorityScheduler", "QueueFull", "SafetyLane", "Timer"]

logger = logging.getLogger(__name__)

SafetyLane = Literal["dedicated", "shared"]
SAFETY = 0
DEFAULT_RANK = 1  # standard
DEFAULT_LIMITS = (64, 256, 512)


BatchObserver = Callable[[QueueKey, int, float], None]
"""Called on the loop after each batch with (queue key, rows, run seconds)."""


class QueueFull(Unavailable):
    """The request's priority class already has its maximum of queued requests (HTTP 503)."""


class PriorityScheduler:
    """Per-model, per-class queues feeding the accelerator's execution lane(s), one batch at a time each."""

    def __init__(
        self,
        name: str = "cpu",
        *,
        depth: int = 2,
        clock: Clock | None = None,
        observer: BatchObserver | None = None,
        estimates: ServiceTimes | None = None,
        limits: Sequence[int] = DEFAULT_LIMITS,
        safety_lane: SafetyLane = "dedicated",
        safety_max_wait_s: float = 0.002,
        safety_window_s: float = 1.0,
    ) -> None:
        # Created inside the running loop: futures and timers belong to it.
        self._loop = asyncio.get_running_loop()
        self._clock: Clock = clock if clock is not None else self._loop
        self.name = name
        self._observer = observer
        self.estimates = estimates if estimates is not None else ServiceTimes()
        self._limits = tuple(limits)
        self._main = Lane(name, depth)
        self._safety = Lane(f"{name}-safety", depth) if safety_lane == "dedicated" else self._main
        self.safety_lane: SafetyLane = safety_lane
        self._safety_max_wait_s = safety_max_wait_s
        self._safety_window_s = safety_window_s
        self._last_safety = -math.inf
        self._queues: dict[QueueKey, ModelQueue] = {}
        self._class_counts = [0] * CLASSES
        self._scheduled = False
        self._timer: Timer | None = None
        self._timer_at = 0.0
        self._expiry = ExpiryTimer(self._clock, self._check_idle)
        self._seq = itertools.count()
        self._closed = False
        self._waiters: list[asyncio.Future[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()

    # --- configuration ---------------------------------------------------------------------------

    def add_queue(
        self,
        key: QueueKey,
        run: RunBatch,
        input_names: tuple[str, ...],
        max_batch_size: int,
        max_queue_delay_s: float = 0.0,
    ) -> ModelQueue:
        """Register a model's queue; `run` is called in a lane's thread with a whole batch."""
        queue = ModelQueue(key, run, input_names, max_batch_size, max_queue_delay_s, class_counts=self._class_counts)
        self._queues[key] = queue
        return queue

    async def remove_queue(self, key: QueueKey) -> None:
        """Refuse new requests for a queue, let queued and running ones finish, then forget it."""
        queue = self._queues.get(key)
        if queue is None:
            return
        queue.closed = True
        while queue.has_items() or queue.inflight:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append(waiter)
            await waiter
        self._queues.pop(key, None)
        self.estimates.forget(key)

    def queue_rows(self) -> dict[QueueKey, int]:
        """Rows waiting per queue (for the queue-depth gauge)."""
        return {key: q.total_rows() for key, q in self._queues.items()}

    def queued(self, rank: int) -> int:
        """Requests waiting in a class, across models."""
        return self._class_counts[rank]

    def now(self) -> float:
        """The scheduler's monotonic clock (loop time unless injected)."""
        return self._clock.time()

    @property
    def inflight(self) -> int:
        """Batches handed to the lanes and not yet completed."""
        return self._main.inflight + (self._safety.inflight if self._safety is not self._main else 0)

    # --- admission -------------------------------------------------------------------------------

    def _lane_for(self, rank: int) -> Lane:
        return self._safety if rank == SAFETY else self._main

    def has_room(self, rank: int) -> bool:
        """True if the class may queue one more request."""
        return self._class_counts[rank] < self._limits[rank]

    def estimate_s(self, key: QueueKey, rows: int, rank: int) -> float:
        """Seconds until a request of `rows` rows of `key` at class `rank` would complete if queued now.

        = the rest of the running batch + batches already handed + the work queued at equal or higher
        priority on the same lane (in batches of each model's max size) + the request's own batch.
        """
        lane = self._lane_for(rank)
        total = lane.remaining_s(self._clock.time())
        batch_s = self.estimates.batch_s
        ranks = [r for r in range(rank + 1) if self._lane_for(r) is lane]
        for queue in self._queues.values():
            queued = queue.rows
            if queue.key == key or any(queued[r] for r in ranks):  # the hot path: most queues are empty
                per_batch = partial(batch_s, queue.key)
                for r in ranks:
                    extra = rows if r == rank and queue.key == key else 0
                    total += queue.work_s(r, extra, per_batch)
        if key not in self._queues:
            total += batch_s(key, rows)
        return total

    # --- the hot path ----------------------------------------------------------------------------

    def submit(
        self,
        key: QueueKey,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        rows: int,
        *,
        rank: int = DEFAULT_RANK,
        deadline: float | None = None,
    ) -> asyncio.Future[Tensors]:
        """Queue one request of `rows` rows at class `rank` (0 = safety); resolves to its outputs."""
        if self._closed:
            raise Unavailable("the agent is shutting down")
        queue = self._queues.get(key)
        if queue is None or queue.closed:
            raise NotFound(f"no queue for model {str(key)!r}")
        if not self.has_room(rank):
            backlog = self.estimate_s(key, rows, rank)
            raise QueueFull(f"queue of priority class {rank} is full", retry_after_s=backlog)
        now = self._clock.time()
        future: asyncio.Future[Tensors] = self._loop.create_future()
        seq = next(self._seq)
        request = Request(inputs, rows, future, now, rank=rank, deadline=deadline, seq=seq)
        queue.push(request)
        if rank == SAFETY:
            self._last_safety = now
        if deadline is not None:
            self._expiry.add(queue, request, deadline)
        self._idle.clear()
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._dispatch)
        return future

    def _safety_active(self, now: float) -> bool:
        return now - self._last_safety < self._safety_window_s or self._class_counts[SAFETY] > 0

    def _dispatch(self) -> None:
        """Hand batches to the lanes while they have room; arm a timer for a queue still waiting."""
        self._scheduled = False
        now = self._clock.time()
        while True:
            choice = self._pick(now)
            if choice is None:
                break
            queue, rank, lane = choice
            limit = queue.max_batch_size
            if rank != SAFETY and self._safety is self._main and limit > 0 and self._safety_active(now):
                limit = self._capped_rows(queue)
            batch = queue.take(rank, limit, now, self.estimates.batch_s(queue.key, 1))
            if not batch:
                continue
            lane.handed(self.estimates.batch_s(queue.key, sum(r.rows for r in batch)), now)
            queue.inflight += 1
            lane.executor.submit(self._run, lane, queue, batch)
        self._arm_timer(now)
        self._check_idle()

    def _pick(self, now: float) -> tuple[ModelQueue, int, Lane] | None:
        """The next (queue, class, lane): highest class first, oldest head within it; None if nothing can go."""
        blocked: list[Lane] = []
        for rank in range(CLASSES):
            lane = self._lane_for(rank)
            if lane in blocked:
                continue
            best: ModelQueue | None = None
            best_seq = -1
            waiting = False
            for queue in self._queues.values():
                head = queue.head(rank)
                if head is None:
                    continue
                waiting = True
                if (best is None or head.seq < best_seq) and self._can_hand(lane, queue, rank, head, now):
                    best, best_seq = queue, head.seq
            if best is not None:
                return best, rank, lane
            if waiting:
                blocked.append(lane)  # strict priority: lower classes never overtake a waiting higher one
        return None

    def _can_hand(self, lane: Lane, queue: ModelQueue, rank: int, head: Request, now: float) -> bool:
        if lane.inflight >= lane.depth:
            return False
        if rank != SAFETY and lane.inflight > 0 and self._safety is self._main and self._safety_active(now):
            return False  # shared lane: never pre-hand lower work while safety is active (the bound)
        if queue.full(rank):
            return True
        if now < head.enqueued_at + queue.max_queue_delay_s:
            return False
        # A second batch in the lane must be full, except safety's: it runs next, partial or not.
        return lane.inflight == 0 or rank == SAFETY

    def _capped_rows(self, queue: ModelQueue) -> int:
        """Most rows whose estimated run time fits the safety bound (at least one request is always taken)."""
        rows = queue.max_batch_size
        while rows > 1 and self.estimates.batch_s(queue.key, rows) > self._safety_max_wait_s:
            rows -= 1
        return rows

    def _arm_timer(self, now: float) -> None:
        """Wake up when the oldest request of a partial batch on an idle lane has waited its delay."""
        when = math.inf
        for queue in self._queues.values():
            for rank in range(CLASSES):
                if self._lane_for(rank).inflight > 0:
                    continue  # the batch completion dispatches again
                head = queue.head(rank)
                if head is not None:
                    when = min(when, head.enqueued_at + queue.max_queue_delay_s)
        if when == math.inf or when <= now:
            return
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._clock.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    # --- the lane threads ------------------------------------------------------------------------

    def _run(self, lane: Lane, queue: ModelQueue, batch: list[Request]) -> None:
        """In the lane's thread: run the batch and hand the results back to the loop."""
        start = time.perf_counter()
        try:
            results: list[Tensors] | BaseException = run_batch(queue, batch)
        except BaseException as exc:  # every Future of the batch fails with it
            results = exc
        elapsed = time.perf_counter() - start
        # RuntimeError: the loop closed during shutdown, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._complete, lane, queue, batch, results, elapsed)

    def _complete(
        self,
        lane: Lane,
        queue: ModelQueue,
        batch: list[Request],
        results: list[Tensors] | BaseException,
        elapsed: float,
    ) -> None:
        wall = lane.completed(self._clock.time())
        queue.inflight -= 1
        rows = sum(r.rows for r in batch)
        if isinstance(results, BaseException):
            logger.error("batch of %s request(s) for %s failed: %s", len(batch), queue.key, results)
            for request in batch:
                if not request.future.done():
                    error = InferenceFailed(f"inference failed for model {str(queue.key)!r}: {results}")
                    error.__cause__ = results
                    request.future.set_exception(error)
        else:
            # Wall time on the loop clock when the lane's clock is the real loop (tests inject fake clocks).
            self.estimates.observe(queue.key, rows, max(elapsed, wall) if self._clock is self._loop else elapsed)
            for request, result in zip(batch, results, strict=True):
                if not request.future.done():
                    request.future.set_result(result)
        if self._observer is not None:
            try:
                self._observer(queue.key, rows, elapsed)
            except Exception:
                logger.exception("batch observer failed")
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()
        self._dispatch()

    def _check_idle(self) -> None:
        if self.inflight == 0 and not any(q.has_items() for q in self._queues.values()):
            self._idle.set()
            if self._waiters:
                for waiter in self._waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                self._waiters.clear()

    # --- shutdown --------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait until every queued and running batch has completed."""
        await self._idle.wait()

    async def aclose(self) -> None:
        """Refuse new work, fail what is still queued, wait for the running batches, stop the threads."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._expiry.cancel()
        for queue in self._queues.values():
            queue.fail_all(Unavailable("the agent is shutting down"))
        await asyncio.to_thread(self._main.shutdown)
        if self._safety is not self._main:
            await asyncio.to_thread(self._safety.shutdown)
