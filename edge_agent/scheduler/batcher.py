"""The dynamic batcher: per-model queues feeding one single-thread execution lane per accelerator.

Policy (Triton's, minus its idle wait by default): when the lane is idle, a queue is dispatched as soon as
it holds a full batch, or its oldest request has waited `max_queue_delay`; with a delay of 0 it is
dispatched on the next loop iteration, so requests parsed in the same iteration share a batch. While a
batch runs, requests accumulate and the next batch takes all that fit. Up to `depth` batches may be handed
to the lane's thread at once, but only the first may be partial, so pipelining never shrinks batches.

Issue 4 replaces `_pick` with a strict-priority, deadline-aware choice across the same queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from edge_agent.errors import InferenceFailed, NotFound, Unavailable
from edge_agent.scheduler.queue import ModelQueue, Request, RunBatch, Tensors, run_batch

__all__ = ["BatchObserver", "Batcher", "Clock", "Timer"]

logger = logging.getLogger(__name__)


class Timer(Protocol):
    """A scheduled callback that can be cancelled (asyncio.TimerHandle is one)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic time and timers; the running event loop is one. Injected in tests."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object], /) -> Timer: ...


BatchObserver = Callable[[str, int, float], None]
"""Called on the loop after each batch with (queue key, rows, run seconds)."""


class Batcher:
    """Batches requests per model and runs them, one batch at a time, in a dedicated worker thread."""

    def __init__(
        self,
        name: str = "cpu",
        *,
        depth: int = 2,
        clock: Clock | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        # Created inside the running loop: futures and timers belong to it.
        self._loop = asyncio.get_running_loop()
        self._clock: Clock = clock if clock is not None else self._loop
        self.name = name
        self._depth = depth
        self._observer = observer
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"lane-{name}")
        self._queues: dict[str, ModelQueue] = {}
        self._inflight = 0
        self._scheduled = False
        self._timer: Timer | None = None
        self._timer_at = 0.0
        self._closed = False
        self._waiters: list[asyncio.Future[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()

    # --- configuration ---------------------------------------------------------------------------

    def add_queue(
        self,
        key: str,
        run: RunBatch,
        input_names: tuple[str, ...],
        max_batch_size: int,
        max_queue_delay_s: float = 0.0,
    ) -> ModelQueue:
        """Register a model's queue; `run` is called in the lane's thread with a whole batch."""
        queue = ModelQueue(key, run, input_names, max_batch_size, max_queue_delay_s)
        self._queues[key] = queue
        return queue

    async def remove_queue(self, key: str) -> None:
        """Refuse new requests for a queue, let queued and running ones finish, then forget it."""
        queue = self._queues.get(key)
        if queue is None:
            return
        queue.closed = True
        while queue.items or queue.inflight:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append(waiter)
            await waiter
        self._queues.pop(key, None)

    def queue_rows(self) -> dict[str, int]:
        """Rows waiting per queue (for the queue-depth gauge)."""
        return {key: q.rows for key, q in self._queues.items()}

    def now(self) -> float:
        """The batcher's monotonic clock (loop time unless injected)."""
        return self._clock.time()

    @property
    def inflight(self) -> int:
        """Batches handed to the lane and not yet completed."""
        return self._inflight

    # --- the hot path ----------------------------------------------------------------------------

    def submit(
        self,
        key: str,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        rows: int,
        *,
        priority: int = 0,
        deadline: float | None = None,
    ) -> asyncio.Future[Tensors]:
        """Queue one request of `rows` rows; the Future resolves to its outputs (split to its rows)."""
        if self._closed:
            raise Unavailable("the agent is shutting down")
        queue = self._queues.get(key)
        if queue is None or queue.closed:
            raise NotFound(f"no queue for model {key!r}")
        future: asyncio.Future[Tensors] = self._loop.create_future()
        queue.push(Request(inputs, rows, future, self._clock.time(), priority=priority, deadline=deadline))
        self._idle.clear()
        if not self._scheduled and self._inflight < self._depth:
            self._scheduled = True
            self._loop.call_soon(self._dispatch)
        return future

    def _dispatch(self) -> None:
        """Hand batches to the lane while it has room; arm a timer for a queue still waiting."""
        self._scheduled = False
        now = self._clock.time()
        while self._inflight < self._depth:
            queue = self._pick(now)
            if queue is None:
                break
            batch = queue.take()
            if not batch:
                continue
            self._inflight += 1
            queue.inflight += 1
            self._executor.submit(self._run, queue, batch)
        self._arm_timer()
        if self._inflight == 0 and not any(q.items for q in self._queues.values()):
            self._idle.set()

    def _pick(self, now: float) -> ModelQueue | None:
        """The queue to run next: the one with the oldest ready head (FIFO across models)."""
        best: ModelQueue | None = None
        for queue in self._queues.values():
            if not queue.items:
                continue
            # A second batch in the lane must be full; the first may be partial once its delay is up.
            if not queue.full() and (self._inflight > 0 or now < queue.ready_at()):
                continue
            if best is None or queue.items[0].enqueued_at < best.items[0].enqueued_at:
                best = queue
        return best

    def _arm_timer(self) -> None:
        if self._inflight > 0:
            return  # the batch completion dispatches again
        when = min((q.ready_at() for q in self._queues.values() if q.items), default=None)
        if when is None:
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

    def _run(self, queue: ModelQueue, batch: list[Request]) -> None:
        """In the lane's thread: run the batch and hand the results back to the loop."""
        start = time.perf_counter()
        try:
            results: list[Tensors] | BaseException = run_batch(queue, batch)
        except BaseException as exc:  # every Future of the batch fails with it
            results = exc
        elapsed = time.perf_counter() - start
        # RuntimeError: the loop closed during shutdown, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._complete, queue, batch, results, elapsed)

    def _complete(
        self, queue: ModelQueue, batch: list[Request], results: list[Tensors] | BaseException, elapsed: float
    ) -> None:
        self._inflight -= 1
        queue.inflight -= 1
        if isinstance(results, BaseException):
            logger.error("batch of %s request(s) for %s failed: %s", len(batch), queue.key, results)
            for request in batch:
                if not request.future.done():
                    error = InferenceFailed(f"inference failed for model {queue.key!r}: {results}")
                    error.__cause__ = results
                    request.future.set_exception(error)
        else:
            for request, result in zip(batch, results, strict=True):
                if not request.future.done():
                    request.future.set_result(result)
        if self._observer is not None:
            try:
                self._observer(queue.key, sum(r.rows for r in batch), elapsed)
            except Exception:
                logger.exception("batch observer failed")
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()
        self._dispatch()

    # --- shutdown --------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait until every queued and running batch has completed."""
        await self._idle.wait()

    async def aclose(self) -> None:
        """Refuse new work, fail what is still queued, wait for the running batch, stop the thread."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for queue in self._queues.values():
            self._fail_queued(queue, Unavailable("the agent is shutting down"))
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    def _fail_queued(self, queue: ModelQueue, error: Exception) -> None:
        while queue.items:
            request = queue.items.popleft()
            if not request.future.done():
                request.future.set_exception(error)
        queue.rows = 0
