"""Deadlines of queued requests: a heap and one timer at the earliest, so expiry fires when it happens.

A request whose deadline passes while queued is answered `Expired` (503) by the timer at once, not when a
lane frees up (triton#7512), and it never runs. The heap holds requests weakly: one that left its queue
and finished is freed at once (its inputs can be a large request body), and its entry is skipped lazily;
the heap is compacted when dead entries pile up, so its size stays proportional to what is queued.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import weakref
from collections.abc import Callable
from typing import Protocol

from edge_agent.scheduler.queue import Expired, ModelQueue, Request

__all__ = ["Clock", "ExpiryTimer", "Timer"]

logger = logging.getLogger(__name__)


class Timer(Protocol):
    """A scheduled callback that can be cancelled (asyncio.TimerHandle is one)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic time and timers; the running event loop is one. Injected in tests."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object], /) -> Timer: ...


_COMPACT_MIN = 256


def _waiting(ref: weakref.ref[Request]) -> Request | None:
    """The request if it is still alive, queued and unanswered."""
    request = ref()
    if request is None or not request.queued or request.future.done():
        return None
    return request


class ExpiryTimer:
    """Queued requests by deadline; `on_expired` is called after a round that answered at least one."""

    def __init__(self, clock: Clock, on_expired: Callable[[], None]) -> None:
        self._clock = clock
        self._on_expired = on_expired
        self._heap: list[tuple[float, int, ModelQueue, weakref.ref[Request]]] = []
        self._compact_at = _COMPACT_MIN
        self._seq = itertools.count()
        self._timer: Timer | None = None
        self._at = math.inf

    def add(self, queue: ModelQueue, request: Request, deadline: float) -> None:
        """Watch a queued request's deadline."""
        if len(self._heap) >= self._compact_at:
            self._compact()
        heapq.heappush(self._heap, (deadline, next(self._seq), queue, weakref.ref(request)))
        if deadline < self._at:
            self._arm()

    def cancel(self) -> None:
        """Stop the timer (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._at = math.inf

    def __len__(self) -> int:
        return len(self._heap)

    def _compact(self) -> None:
        """Drop the entries of requests that left their queue; amortised O(1) per add."""
        self._heap = [entry for entry in self._heap if _waiting(entry[3]) is not None]
        heapq.heapify(self._heap)
        self._compact_at = max(_COMPACT_MIN, 2 * len(self._heap))

    def _arm(self) -> None:
        """(Re)arm the timer at the earliest deadline of a still-queued request."""
        heap = self._heap
        while heap and _waiting(heap[0][3]) is None:
            heapq.heappop(heap)
        when = heap[0][0] if heap else math.inf
        if when == self._at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._at = when
        if heap:
            self._timer = self._clock.call_at(when, self._fire)

    def _fire(self) -> None:
        """Answer every queued request whose deadline has passed: 503, and it never runs."""
        self._timer = None
        self._at = math.inf
        now = self._clock.time()
        heap = self._heap
        expired = 0
        while heap and heap[0][0] <= now:
            _, _, queue, ref = heapq.heappop(heap)
            request = _waiting(ref)
            if request is not None:
                queue.drop(request)
                request.future.set_exception(Expired("request deadline expired while queued", retry_after_s=1.0))
                expired += 1
        if expired:
            logger.debug("%s queued request(s) expired", expired)
        self._arm()
        self._on_expired()
