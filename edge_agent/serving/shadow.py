"""Shadow mode: a pipeline's shadow version sees a sampled share of the live inputs; its outputs are compared
with the served ones and never returned.

- **Sampling**: a per-pipeline golden-ratio counter (the split's rule, serving/split.py) picks
  `shadow_share` of the requests answered locally.
- **Lowest priority, dropped first**: a picked request is queued for the shadow version at the best-effort
  class only when no request of any class waits on the device; otherwise it is dropped (counted). Queued,
  it runs after every waiting request of a higher class, and within the pipeline's deadline or not at all.
  The runtime does not preempt: a shadow batch already running finishes (at most one batch time).
- **Compared** (in the future's callback, never on the response path) by `shadow_compare`: `top1` (the
  first output's top-1 class of every row), `max_abs_diff` (every common output within `shadow_tolerance`),
  or `auto` (top1 for a classifier's [rows, k] float output, else max_abs_diff). The largest difference is
  reported either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from edge_agent.scheduler.priority import PriorityScheduler
from edge_agent.serving.admission import Served
from edge_agent.serving.registry import LoadedModel
from edge_agent.serving.stats import PipelineStats
from protocols.pipeline import PRIORITY_RANK, PipelineSpec

__all__ = ["Shadow", "agreement"]

logger = logging.getLogger(__name__)
_GOLDEN = 0.6180339887498949
Tensors = Mapping[str, np.ndarray[Any, Any]]
Versions = Mapping[str, LoadedModel]


def agreement(served: Tensors, shadow: Tensors, tolerance: float, how: str = "auto") -> tuple[bool, float]:
    """(agreed, max abs diff) of a shadow's outputs against the served ones; `how`: PipelineSpec.shadow_compare
    (top1: the first output's top-1 class per row; max_abs_diff: every output within `tolerance`; auto: top1
    for a classifier's [rows, k] float output, else max_abs_diff)."""
    names = [n for n in served if n in shadow]
    diff = 0.0
    for name in names:
        a, b = np.asarray(served[name]), np.asarray(shadow[name])
        if a.shape != b.shape:
            return False, float("inf")
        if a.dtype.kind not in "fiub" or b.dtype.kind not in "fiub":  # BYTES: equal or not
            if not np.array_equal(a, b):
                return False, diff
            continue
        if a.size:
            diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    if not names:
        return False, diff
    first = served[names[0]]
    classifier = first.ndim == 2 and first.dtype.kind in "fiu" and first.shape[1] >= 2
    if how == "top1" or (how == "auto" and classifier and first.dtype.kind == "f"):
        if first.ndim < 1 or first.shape[-1] < 2:
            return False, diff
        top1 = bool(np.array_equal(np.argmax(first, axis=-1), np.argmax(shadow[names[0]], axis=-1)))
        return top1, diff
    return diff <= tolerance, diff


class Shadow:
    """Per-pipeline sampling counters; `offer` is called once per answered request."""

    def __init__(
        self,
        stats: PipelineStats,
        scheduler: Callable[[], PriorityScheduler | None],
        versions: Callable[[str], Versions],
    ) -> None:
        self._stats, self._scheduler, self._versions = stats, scheduler, versions
        self._counters: dict[str, int] = {}

    def answered(self, spec: PipelineSpec, model: LoadedModel, inputs: Tensors, rows: int, served: Served) -> None:
        """After a request is answered: its drift profile (stats.observe), then maybe its shadow run.
        Never raises, never awaits: the response is not delayed."""
        self._stats.observe(spec.name, model.version, inputs, served.outputs)
        scheduler = self._scheduler()
        if not spec.shadows or spec.shadow_version is None or served.where != "local" or scheduler is None:
            return
        n = self._counters.get(spec.name, 0) + 1
        self._counters[spec.name] = n
        if (n * _GOLDEN) % 1.0 >= spec.shadow_share:
            return
        version = spec.shadow_version
        shadow = self._versions(spec.model).get(version)
        if shadow is None or not shadow.ready or any(scheduler.queue_rows().values()):
            self._stats.record_shadow(spec.name, version, "dropped")
            return
        try:
            deadline = scheduler.now() + spec.deadline_ms / 1000.0
            future = scheduler.submit(
                shadow.key, dict(inputs), rows, rank=PRIORITY_RANK["best_effort"], deadline=deadline
            )
        except Exception:  # full best-effort queue, shutting down: dropped, like any best-effort work
            self._stats.record_shadow(spec.name, version, "dropped")
            return
        outputs, tolerance, how = served.outputs, spec.shadow_tolerance, spec.shadow_compare

        def compare(done: asyncio.Future[Any]) -> None:
            if done.cancelled() or done.exception() is not None:
                self._stats.record_shadow(spec.name, version, "failed")
                return
            agreed, diff = agreement(outputs, done.result(), tolerance, how)
            self._stats.record_shadow(spec.name, version, "agreed" if agreed else "disagreed", diff)

        future.add_done_callback(compare)

    def forget(self, name: str) -> None:
        """Drop a pipeline's counter."""
        self._counters.pop(name, None)
