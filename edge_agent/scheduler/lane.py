"""An execution lane: one worker thread running one batch at a time, and what has been handed to it."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

__all__ = ["Lane"]


class Lane:
    """A single-thread executor plus the estimated durations of the batches handed to it, oldest first."""

    def __init__(self, name: str, depth: int) -> None:
        self.name = name
        self.depth = depth
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"lane-{name}")
        self._pending: deque[float] = deque()  # estimated seconds per handed batch; [0] is running
        self._head_started = 0.0

    @property
    def inflight(self) -> int:
        """Batches handed and not yet completed."""
        return len(self._pending)

    def handed(self, estimate_s: float, now: float) -> None:
        """Record a batch handed to the thread (it starts now if the lane was idle)."""
        if not self._pending:
            self._head_started = now
        self._pending.append(estimate_s)

    def completed(self, now: float) -> float:
        """Record the oldest batch's completion (the next one, if any, started then); returns its wall time.

        Wall time on the loop's clock includes what the thread's own timing misses under load: hand-off
        gaps and CPU taken by the event loop (HTTP) on the same core, so admission estimates stay honest.
        """
        if self._pending:
            self._pending.popleft()
        wall = now - self._head_started
        self._head_started = now
        return wall

    def remaining_s(self, now: float) -> float:
        """Estimated seconds until every handed batch has completed."""
        if not self._pending:
            return 0.0
        first = max(0.0, self._pending[0] - (now - self._head_started))
        return first + sum(self._pending) - self._pending[0]

    def shutdown(self) -> None:
        """Wait for the running batch and stop the thread (blocking: call off the loop)."""
        self.executor.shutdown(wait=True)
