"""Drift monitoring: per (device, pipeline, version), a reference profile and a PSI score per load report.

Each load report carries, per pipeline and answering version, the mean and std of every numeric input and
output tensor and a classifier's top-1 class histogram (`PipelineLoad.profiles`, edge_agent/serving/drift.py).

- **Reference**: the first `window` reports with requests after a version first shows up on a device
  (about when it became active), merged; or, when the operator asks (`rebaseline`), the next `window` ones.
- **Score**: the Population Stability Index, PSI = sum (a - e) * ln(a / e) over bins. A tensor's bins are
  the deciles of the reference's normal approximation N(mean, std): e = 0.1 each, a = the share of the
  current interval's N(mean, std) in each bin. The class histogram is compared bin by bin, once both sides
  counted at least `MIN_CLASS_ROWS` rows. The score of a report is the largest PSI of its parts.
- **Drift**: score > `PSI_THRESHOLD` (0.2, the usual "significant shift" line of PSI; 0.1-0.2 is
  "moderate"). A change into drift records a `drift.detected` warning event on the device (its live
  events, listeners on "events"); back under the threshold, `drift.cleared`.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloud_hub.fleet.live import LiveFleet
from protocols.messages import DeviceEvent, LoadReport, TensorProfile, VersionProfile

__all__ = ["MIN_CLASS_ROWS", "PSI_THRESHOLD", "DriftMonitor", "class_psi", "gaussian_psi"]

PSI_THRESHOLD = 0.2
REFERENCE_REPORTS = 3
MIN_CLASS_ROWS = 100
_EPS = 1e-4  # floor of a bin's share (an empty bin would make ln(a / e) infinite)
_DECILES = [NormalDist().inv_cdf(k / 10) for k in range(1, 10)]
_UNIT = NormalDist()
log = logging.getLogger(__name__)


def gaussian_psi(ref_mean: float, ref_std: float, mean: float, std: float) -> float:
    """PSI of N(mean, std) against N(ref_mean, ref_std) over the reference's deciles."""
    floor = 1e-9 * max(1.0, abs(ref_mean))
    ref_std, std = max(ref_std, floor), max(std, floor)
    cdf = [0.0] + [_UNIT.cdf((ref_mean + ref_std * z - mean) / std) for z in _DECILES] + [1.0]
    score = 0.0
    for lo, hi in itertools.pairwise(cdf):
        actual = max(hi - lo, _EPS)
        score += (actual - 0.1) * math.log(actual / 0.1)
    return score


def class_psi(reference: list[int], current: list[int]) -> float | None:
    """PSI of two class histograms; None when either side has fewer than MIN_CLASS_ROWS rows."""
    total_ref, total = sum(reference), sum(current)
    if total_ref < MIN_CLASS_ROWS or total < MIN_CLASS_ROWS or len(reference) != len(current):
        return None
    score = 0.0
    for r, c in zip(reference, current, strict=True):
        e, a = max(r / total_ref, _EPS), max(c / total, _EPS)
        score += (a - e) * math.log(a / e)
    return score


@dataclass
class _Moments:
    """Merged element moments of one tensor: (count, mean, M2) (Chan's parallel update)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, t: TensorProfile) -> None:
        if t.values == 0:
            return
        n = self.n + t.values
        delta = t.mean - self.mean
        self.m2 += t.std * t.std * t.values + delta * delta * self.n * t.values / n
        self.mean += delta * t.values / n
        self.n = n

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else 0.0


@dataclass
class _Profile:
    reports: int = 0
    tensors: dict[str, _Moments] = field(default_factory=dict)  # "input:x" / "output:y"
    classes: list[int] = field(default_factory=list)

    def add(self, p: VersionProfile) -> None:
        self.reports += 1
        for kind, tensors in (("input", p.inputs), ("output", p.outputs)):
            for t in tensors:
                self.tensors.setdefault(f"{kind}:{t.name}", _Moments()).add(t)
        if p.classes:
            if len(self.classes) < len(p.classes):
                self.classes.extend([0] * (len(p.classes) - len(self.classes)))
            for i, c in enumerate(p.classes):
                self.classes[i] += c


@dataclass
class DriftState:
    """What the hub knows of one (device, pipeline, version)."""

    device_id: str
    pipeline: str
    model: str
    version: str
    reference: _Profile | None = None
    building: _Profile = field(default_factory=_Profile)
    set_by: str = "window"  # window (after the version appeared) or operator (rebaseline)
    score: float | None = None
    parts: dict[str, float] = field(default_factory=dict)
    drifted: bool = False
    checked_at: float | None = None
    scored: int = 0  # reports scored against the current reference
    last: VersionProfile | None = None  # the latest profile with requests (rollout drift gate)
    last_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The API's row."""
        return {
            "device_id": self.device_id,
            "pipeline": self.pipeline,
            "model": self.model,
            "version": self.version,
            "reference": "building" if self.reference is None else self.set_by,
            "reference_reports": self.reference.reports if self.reference else self.building.reports,
            "psi": self.score,
            "parts": dict(sorted(self.parts.items())),
            "drifted": self.drifted,
            "threshold": PSI_THRESHOLD,
            "checked_at": self.checked_at,
            "scored_reports": self.scored,
        }


def score_parts(reference: _Profile, p: VersionProfile) -> dict[str, float]:
    """PSI per part (`input:<name>`, `output:<name>`, `classes`) of a profile against a reference."""
    parts: dict[str, float] = {}
    for kind, tensors in (("input", p.inputs), ("output", p.outputs)):
        for t in tensors:
            ref = reference.tensors.get(f"{kind}:{t.name}")
            if ref is not None and ref.n and t.values:
                parts[f"{kind}:{t.name}"] = gaussian_psi(ref.mean, ref.std, t.mean, t.std)
    classes = class_psi(reference.classes, list(p.classes)) if p.classes else None
    if classes is not None:
        parts["classes"] = classes
    return parts


class DriftMonitor:
    """Subscribed to the fleet's telemetry; keeps one DriftState per (device, pipeline, version)."""

    def __init__(
        self, fleet: LiveFleet, *, window: int = REFERENCE_REPORTS, clock: Callable[[], float] = time.time
    ) -> None:
        self.fleet, self.window, self.clock = fleet, window, clock
        self.states: dict[tuple[str, str, str], DriftState] = {}
        self.flagged = 0  # transitions into drift
        fleet.subscribe("telemetry", self.on_telemetry)

    def on_telemetry(self, device_id: str, message: object) -> None:
        """Fold one accepted load report in (a listener: never raises into ingest)."""
        if not isinstance(message, LoadReport):
            return
        for load in message.pipelines:
            for p in load.profiles:
                if p.requests == 0:
                    continue
                key = (device_id, load.name, p.version)
                state = self.states.get(key)
                if state is None:
                    state = self.states[key] = DriftState(device_id, load.name, load.model, p.version)
                state.last, state.last_at = p, self.clock()
                self._fold(state, p)

    def _fold(self, state: DriftState, p: VersionProfile) -> None:
        if state.reference is None:
            state.building.add(p)
            if state.building.reports >= self.window:
                state.reference, state.building = state.building, _Profile()
            return
        state.parts = score_parts(state.reference, p)
        state.score = max(state.parts.values(), default=None)
        state.checked_at = self.clock()
        state.scored += 1
        drifted = state.score is not None and state.score > PSI_THRESHOLD
        if drifted != state.drifted:
            state.drifted = drifted
            self.flagged += drifted
            self._event(state)

    def _event(self, state: DriftState) -> None:
        live = self.fleet.get(state.device_id)
        if state.drifted:
            worst = max(state.parts, key=state.parts.__getitem__)
            text = f"pipeline {state.pipeline!r}: drift, PSI {state.score:.3f} > {PSI_THRESHOLD} ({worst})"
        else:
            text = f"pipeline {state.pipeline!r}: drift cleared, PSI {state.score or 0.0:.3f}"
        event = DeviceEvent(
            device_id=state.device_id,
            at=self.clock(),
            level="warning" if state.drifted else "info",
            kind="drift.detected" if state.drifted else "drift.cleared",
            message=text,
            model=state.model,
            version=state.version,
        )
        log.log(logging.WARNING if state.drifted else logging.INFO, "device %s %s", state.device_id, text)
        if live is not None:
            live.events.append(event)
            del live.events[: -LiveFleet.MAX_EVENTS]
        self.fleet.notify("events", state.device_id, event)

    def rebaseline(self, device_id: str, pipeline: str | None = None) -> int:
        """Operator: the next `window` reports of the device's (pipeline's) versions become the reference."""
        count = 0
        for (dev, name, _), state in self.states.items():
            if dev == device_id and pipeline in (None, name):
                state.reference, state.building, state.set_by = None, _Profile(), "operator"
                state.score, state.parts, state.drifted, state.scored = None, {}, False, 0
                count += 1
        return count

    def against(
        self, device_id: str, pipeline: str, version: str, reference_version: str, since: float
    ) -> dict[str, float] | None:
        """PSI parts of `version`'s latest profile (received after `since`) against the reference profile of
        `reference_version` on the same device and pipeline; None while either is missing."""
        ref = self.states.get((device_id, pipeline, reference_version))
        new = self.states.get((device_id, pipeline, version))
        if ref is None or ref.reference is None or new is None or new.last is None or (new.last_at or 0.0) <= since:
            return None
        return score_parts(ref.reference, new.last)

    def rows(self, device_id: str | None = None) -> list[dict[str, Any]]:
        """Every state (of one device), sorted."""
        return [s.to_json() for k, s in sorted(self.states.items()) if device_id in (None, k[0])]

    def register(self, registry: CollectorRegistry) -> None:
        """Export `edgefleet_hub_drift_psi` and `edgefleet_hub_drift_flagged` (scrape time)."""
        registry.register(_DriftCollector(self))


class _DriftCollector(Collector):
    def __init__(self, monitor: DriftMonitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterator[Metric]:
        labels = ["device", "pipeline", "version"]
        psi = GaugeMetricFamily("edgefleet_hub_drift_psi", "Latest PSI drift score vs the reference", labels=labels)
        drifted = GaugeMetricFamily("edgefleet_hub_drift_active", "1 while the PSI is over 0.2", labels=labels)
        for (device, pipeline, version), state in sorted(self._monitor.states.items()):
            if state.score is not None:
                psi.add_metric([device, pipeline, version], state.score)
                drifted.add_metric([device, pipeline, version], float(state.drifted))
        yield psi
        yield drifted
        yield CounterMetricFamily(
            "edgefleet_hub_drift_flagged", "Times a pipeline version went into drift", value=self._monitor.flagged
        )
