"""Deadlines of queued requests: a heap and one timer at the earliest, so expiry fires when it happens.

A request whose deadline passes while queued is answered `Expired` (503) by the timer at once, not when a
lane frees up (triton#7512), and it never runs. Requests that left their queue are skipped lazily.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
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


class ExpiryTimer:
    """Queued requests by deadline; `on_expired` is called after a round that answered at least one."""

    def __init__(self, clock: Clock, on_expired: Callable[[], None]) -> None:
        self._clock = clock
        self._on_expired = on_expired
        self._heap: list[tuple[float, int, ModelQueue, Request]] = []
        self._seq = itertools.count()
        self._timer: Timer | None = None
        self._at = math.inf

    def add(self, queue: ModelQueue, request: Request, deadline: float) -> None:
        """Watch a queued request's deadline."""
        heapq.heappush(self._heap, (deadline, next(self._seq), queue, request))
        if deadline < self._at:
            self._arm()

    def cancel(self) -> None:
        """Stop the timer (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._at = math.inf

    def _arm(self) -> None:
        """(Re)arm the timer at the earliest deadline of a still-queued request."""
        heap = self._heap
        while heap and not (heap[0][3].queued and not heap[0][3].future.done()):
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
            _, _, queue, request = heapq.heappop(heap)
            if request.queued and not request.future.done():
                queue.drop(request)
                request.future.set_exception(Expired("request deadline expired while queued", retry_after_s=1.0))
                expired += 1
        if expired:
            logger.debug("%s queued request(s) expired", expired)
        self._arm()
        self._on_expired()
