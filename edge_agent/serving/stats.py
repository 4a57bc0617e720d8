"""Per-pipeline request statistics for telemetry, fed by the serving core on every request.

`PipelineStats.record` is on the request path: it takes one uncontended lock, bumps a few integers and
one histogram bucket. Quantiles come from fixed log-spaced buckets (about 5 % relative resolution from
50 us to ~100 s), so memory is constant and p50/p99 need no sorting. `snapshot` returns the figures of
the interval since the previous snapshot and starts a new interval.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

import numpy as np

from edge_agent.serving.drift import VersionSums, class_counts, tensor_sums
from protocols.messages import PipelineLoad, PoolOffer, RouteCounts, ShadowStats

Outcome = Literal["local", "cloud", "rejected", "expired", "invalid"]
"""Where a request went: answered locally or by a cloud pool, rejected at admission (503), expired (503), or
refused as invalid (400: counted as an error, in no telemetry route)."""
OUTCOMES: tuple[str, ...] = get_args(Outcome)
Priority = Literal["safety", "standard", "best_effort"]
ShadowOutcome = Literal["agreed", "disagreed", "dropped", "failed"]

_MIN_LATENCY_S = 50e-6
_GROWTH = 1.05  # bucket i covers [MIN * G**i, MIN * G**(i+1))
_BUCKETS = 300  # MIN * 1.05**300 is about 115 s; slower requests land in the last bucket
_LOG_GROWTH = math.log(_GROWTH)


class PipelineStatsSource(Protocol):
    """What telemetry reads: the load of every pipeline over the interval since the last call."""

    def snapshot(self, interval_s: float) -> Sequence[PipelineLoad]:
        """Per-pipeline load for the interval just ended (of length `interval_s`); starts the next one."""
        ...


def _bucket(latency_s: float) -> int:
    if latency_s <= _MIN_LATENCY_S:
        return 0
    return min(_BUCKETS - 1, int(math.log(latency_s / _MIN_LATENCY_S) / _LOG_GROWTH))


def _bucket_mid_ms(index: int) -> float:
    # Geometric middle of the bucket: the error is at most half a bucket (~2.5 %).
    return float(_MIN_LATENCY_S * _GROWTH ** (index + 0.5) * 1000.0)


def _quantile_ms(histogram: list[int], total: int, q: float) -> float | None:
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return _bucket_mid_ms(index)
    return _bucket_mid_ms(_BUCKETS - 1)  # pragma: no cover - rank <= total always hits above


@dataclass
class _Interval:
    requests: int = 0
    errors: int = 0
    routes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    histogram: list[int] = field(default_factory=lambda: [0] * _BUCKETS)
    timed: int = 0
    offered: dict[str, list[int]] = field(default_factory=dict)  # pool -> [requests, rows]
    profiles: dict[str, VersionSums] = field(default_factory=dict)  # version -> input/output statistics
    shadow: dict[str, Any] | None = None  # ShadowStats fields (serving/shadow.py)


@dataclass
class _Pipeline:
    model: str
    priority: Priority
    version: str | None = None
    queue_depth: Callable[[], int] | None = None
    current: _Interval = field(default_factory=_Interval)


class PipelineStats:
    """In-memory per-pipeline counters and latency histograms; `record` is cheap and thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipelines: dict[str, _Pipeline] = {}

    def register(
        self,
        pipeline: str,
        *,
        model: str,
        priority: Priority = "standard",
        version: str | None = None,
        queue_depth: Callable[[], int] | None = None,
    ) -> None:
        """Declare a pipeline (or update its model, version, priority or queue-depth gauge)."""
        with self._lock:
            entry = self._pipelines.get(pipeline)
            if entry is None:
                self._pipelines[pipeline] = _Pipeline(model, priority, version, queue_depth)
            else:
                entry.model, entry.priority, entry.version = model, priority, version
                entry.queue_depth = queue_depth

    def unregister(self, pipeline: str) -> None:
        """Forget a pipeline that is no longer served."""
        with self._lock:
            self._pipelines.pop(pipeline, None)

    def record(self, pipeline: str, outcome: Outcome, latency_s: float, ok: bool = True) -> None:
        """Count one request: where it went, how long it took (answered ones) and whether it failed."""
        with self._lock:
            entry = self._pipelines.get(pipeline)
            if entry is None:
                # Unregistered pipelines are still counted rather than lost; model = pipeline name.
                entry = self._pipelines[pipeline] = _Pipeline(pipeline, "standard")
            interval = entry.current
            interval.requests += 1
            interval.routes[outcome] += 1
            if not ok:
                interval.errors += 1
            if outcome in ("local", "cloud") and ok:
                interval.histogram[_bucket(latency_s)] += 1
                interval.timed += 1

    def record_offer(self, pipeline: str, pool: str, rows: int) -> None:
        """Count one request of `pipeline` sent to cloud pool `pool` with `rows` rows (answered or not)."""
        with self._lock:
            entry = self._pipelines.get(pipeline)
            if entry is None:
                entry = self._pipelines[pipeline] = _Pipeline(pipeline, "standard")
            counts = entry.current.offered.setdefault(pool, [0, 0])
            counts[0] += 1
            counts[1] += rows

    def observe(
        self,
        pipeline: str,
        version: str,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        outputs: Mapping[str, np.ndarray[Any, Any]],
    ) -> None:
        """Add one answered request's input/output statistics (serving/drift.py; computed outside the lock)."""
        sums_in, sums_out, classes = tensor_sums(inputs), tensor_sums(outputs), class_counts(outputs)
        with self._lock:
            entry = self._pipelines.get(pipeline)
            if entry is not None:
                entry.current.profiles.setdefault(version, VersionSums()).add(sums_in, sums_out, classes)

    def record_shadow(self, pipeline: str, version: str, outcome: ShadowOutcome, diff: float | None = None) -> None:
        """Count one shadow decision of `pipeline`: dropped, failed, or compared (agreed / disagreed)."""
        with self._lock:
            entry = self._pipelines.get(pipeline)
            if entry is None:
                return
            shadow = entry.current.shadow
            if shadow is None or shadow["version"] != version:
                shadow = entry.current.shadow = {"version": version, "sampled": 0, "compared": 0, "agreed": 0}
                shadow.update(dropped=0, failed=0, max_abs_diff=None)
            shadow["sampled"] += 1
            if outcome in ("dropped", "failed"):
                shadow[outcome] += 1
                return
            shadow["compared"] += 1
            shadow["agreed"] += outcome == "agreed"
            if diff is not None and math.isfinite(diff):
                shadow["max_abs_diff"] = max(diff, shadow["max_abs_diff"] or 0.0)

    def snapshot(self, interval_s: float) -> tuple[PipelineLoad, ...]:
        """Per-pipeline load over the interval just ended; resets the interval counters."""
        with self._lock:
            taken = [(name, entry, entry.current) for name, entry in sorted(self._pipelines.items())]
            for _, entry, _ in taken:
                entry.current = _Interval()
        loads = []
        for name, entry, interval in taken:
            depth = 0
            if entry.queue_depth is not None:
                try:
                    depth = max(0, int(entry.queue_depth()))
                except Exception:  # a broken gauge must not cost the whole report
                    depth = 0
            loads.append(
                PipelineLoad(
                    name=name,
                    model=entry.model,
                    version=entry.version,
                    priority=entry.priority,
                    requests_per_s=interval.requests / interval_s if interval_s > 0 else 0.0,
                    routes=RouteCounts(**{k: n for k, n in interval.routes.items() if k != "invalid"}),
                    errors=interval.errors,
                    p50_ms=_quantile_ms(interval.histogram, interval.timed, 0.50),
                    p99_ms=_quantile_ms(interval.histogram, interval.timed, 0.99),
                    queue_depth=depth,
                    offered=tuple(
                        PoolOffer(pool=pool, requests=n, rows=rows)
                        for pool, (n, rows) in sorted(interval.offered.items())
                    ),
                    shadow=None if interval.shadow is None else ShadowStats(**interval.shadow),
                    profiles=tuple(sums.profile(v) for v, sums in sorted(interval.profiles.items())),
                )
            )
        return tuple(loads)
