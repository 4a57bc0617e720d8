"""Service-time estimates per (model, batch rows), learnt from measured batch durations (EWMA)."""

from __future__ import annotations

import bisect

from edge_agent.scheduler.queue import QueueKey

__all__ = ["DEFAULT_BATCH_S", "ServiceTimes"]

DEFAULT_BATCH_S = 0.005  # before any measurement of a model (warm-up seeds real figures at load)


SEED_SAMPLES = 3  # the first runs of a size (warm-up) may be cold: keep the fastest of these, then EWMA


class ServiceTimes:
    """EWMA of batch run time per model and row count; unmeasured sizes are interpolated."""

    def __init__(self, alpha: float = 0.2) -> None:
        self._alpha = alpha
        self._times: dict[QueueKey, dict[int, float]] = {}
        self._counts: dict[tuple[QueueKey, int], int] = {}
        self._sizes: dict[QueueKey, list[int]] = {}

    def observe(self, key: QueueKey, rows: int, seconds: float) -> None:
        """Fold one measured batch duration into the estimate of (key, rows)."""
        times = self._times.setdefault(key, {})
        old = times.get(rows)
        count = self._counts.get((key, rows), 0) + 1
        self._counts[(key, rows)] = count
        if old is None:
            times[rows] = seconds
            bisect.insort(self._sizes.setdefault(key, []), rows)
        elif count <= SEED_SAMPLES:
            times[rows] = min(old, seconds)
        else:
            times[rows] = old + self._alpha * (seconds - old)

    def forget(self, key: QueueKey) -> None:
        """Drop the estimates of a model version that was unloaded."""
        self._times.pop(key, None)
        self._sizes.pop(key, None)
        self._counts = {k: n for k, n in self._counts.items() if k[0] != key}

    def batch_s(self, key: QueueKey, rows: int) -> float:
        """Estimated run time of a batch of `rows` rows of model `key`."""
        times = self._times.get(key)
        if not times:
            return DEFAULT_BATCH_S
        exact = times.get(rows)
        if exact is not None:
            return exact
        sizes = self._sizes[key]
        i = bisect.bisect_left(sizes, rows)
        if i == 0:
            return times[sizes[0]]  # smaller than anything measured: no cheaper than the smallest
        if i == len(sizes):
            top = sizes[-1]
            return times[top] * rows / top  # larger: linear in rows from the largest measured
        lo, hi = sizes[i - 1], sizes[i]
        t_lo, t_hi = times[lo], times[hi]
        return t_lo + (t_hi - t_lo) * (rows - lo) / (hi - lo)

    def snapshot(self) -> dict[QueueKey, dict[int, float]]:
        """Current estimates (seconds) by model key and rows."""
        return {key: dict(sorted(times.items())) for key, times in self._times.items()}
