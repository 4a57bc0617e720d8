"""What the shadow and drift gates read: shadow comparisons from the devices' load reports, and the drift
monitor's profiles. Both live in this hub process's memory (fed by the fleet's accepted reports, like
cloud_hub/fleet/drift.py): a restarted hub gathers them again from the next reports, and with several hub
replicas the driving one judges from the reports it received (its share of the shared subscription).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

from cloud_hub.fleet.drift import DriftMonitor
from cloud_hub.fleet.live import LiveFleet
from protocols.messages import LoadReport, ShadowStats

__all__ = ["Agreement", "Evidence"]

# Shadow records kept per device (one per pipeline with a shadow per report).
KEEP_PER_DEVICE = 4096


@dataclass(frozen=True, slots=True)
class Agreement:
    """Shadow comparisons of a candidate on one device over a time span."""

    compared: int = 0
    agreed: int = 0
    max_abs_diff: float | None = None


@dataclass(frozen=True, slots=True)
class _Seen:
    at: float
    pipeline: str
    model: str
    stats: ShadowStats


class Evidence:
    """A listener on the fleet's telemetry (shadow stats) plus the drift monitor, queried by the rollout gates."""

    def __init__(
        self, fleet: LiveFleet, drift: DriftMonitor | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.drift = drift
        self.clock = clock
        self._seen: dict[str, collections.deque[_Seen]] = {}
        fleet.subscribe("telemetry", self.on_telemetry)

    def on_telemetry(self, device_id: str, message: object) -> None:
        """Keep the shadow stats of one accepted report."""
        if not isinstance(message, LoadReport):
            return
        now = self.clock()
        for load in message.pipelines:
            if load.shadow is not None and (load.shadow.sampled or load.shadow.compared):
                seen = self._seen.setdefault(device_id, collections.deque(maxlen=KEEP_PER_DEVICE))
                seen.append(_Seen(now, load.name, load.model, load.shadow))

    def agreement(self, device_id: str, model: str, version: str, since: float) -> Agreement:
        """Comparisons of `version` shadowing the pipelines of `model`, from reports received after `since`."""
        compared = agreed = 0
        worst: float | None = None
        for s in self._seen.get(device_id, ()):
            if s.at <= since or s.model != model or s.stats.version != version:
                continue
            compared += s.stats.compared
            agreed += s.stats.agreed
            if s.stats.max_abs_diff is not None:
                worst = max(worst or 0.0, s.stats.max_abs_diff)
        return Agreement(compared, agreed, worst)

    def drift_against(
        self, device_id: str, model: str, version: str, reference_version: str, since: float
    ) -> tuple[float, str] | None:
        """(worst PSI, "<pipeline> <part>") of `version` on the pipelines of `model` against the reference of
        `reference_version`, from a profile received after `since`; None without a comparable pair."""
        if self.drift is None:
            return None
        worst: tuple[float, str] | None = None
        pipelines = {k[1] for k, s in self.drift.states.items() if k[0] == device_id and s.model == model}
        for pipeline in sorted(pipelines):
            parts = self.drift.against(device_id, pipeline, version, reference_version, since)
            for part, score in sorted((parts or {}).items()):
                if worst is None or score > worst[0]:
                    worst = (score, f"{pipeline} {part}")
        return worst
