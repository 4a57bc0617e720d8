"""Pool demand: the overflow the fleet offers each cloud pool, per model, from each device's latest report.

Every load report says, per pipeline, how many requests (and rows) it sent to each pool over its interval
(`PipelineLoad.offered`). A replica's demand figure for a pool is the sum over devices of those counts in the
device's latest report it received, divided by the report's interval and weighted by this replica's share of
the device's reports: replicas split telemetry round-robin (a shared subscription), so a replica that got
every other seq (the last `SHARE_WINDOW` it received span twice as many) counts half. Summed over replicas
(`sum()` in PromQL) that is the fleet's offered overflow; with one replica the share is exactly 1. The first
report a replica sees of a device (or of a new boot) shows no share yet and is not counted; the next one is.

A device drops out when it goes offline or is revoked, when its latest report here is older than
`STALE_INTERVALS` intervals plus the time this replica's reports of it are apart (it stopped reporting), or
when that report is from an earlier boot than its last birth. Exported as Prometheus gauges
(cloud_hub/metrics.py) for autoscalers (deploy/k8s/pool-keda.yaml).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cloud_hub.fleet.live import LiveFleet
from protocols.messages import LoadReport

__all__ = ["SHARE_WINDOW", "STALE_INTERVALS", "Demand", "PoolDemand"]

STALE_INTERVALS = 3.0
SHARE_WINDOW = 32  # a replica's share of a device's reports: how many of its last seqs it received
# (pool, model) -> (requests per second, rows per second)
Demand = dict[tuple[str, str], tuple[float, float]]


@dataclass(slots=True)
class _Latest:
    report: LoadReport
    received_at: float
    seqs: deque[int] = field(default_factory=lambda: deque(maxlen=SHARE_WINDOW))  # received here, ascending

    def share(self) -> float:
        """Fraction of the device's reports received here: between the oldest and newest seq kept, how many
        came here (the oldest itself excluded, so replicas seeing every Nth report each get 1/N)."""
        return (len(self.seqs) - 1) / (self.seqs[-1] - self.seqs[0])


class PoolDemand:
    """Per device the latest report this replica ingested and its share of the device's reports."""

    def __init__(self, fleet: LiveFleet, clock: Callable[[], float] = time.time) -> None:
        self._fleet = fleet
        self._clock = clock
        self._latest: dict[str, _Latest] = {}
        fleet.subscribe("telemetry", self.on_report)

    def on_report(self, device_id: str, message: object) -> None:
        """Fleet listener: a new (not duplicate) load report was accepted."""
        if not isinstance(message, LoadReport):
            return
        old = self._latest.get(device_id)
        if old is None or old.report.boot_id != message.boot_id or message.seq <= old.report.seq:
            latest = _Latest(message, self._clock())  # new to this replica, or a new boot
        else:
            latest, latest.report, latest.received_at = old, message, self._clock()
        latest.seqs.append(message.seq)
        self._latest[device_id] = latest

    def figures(self) -> Demand:
        """Offered overflow per (pool, model): this replica's share of the fleet's, from the latest fresh reports."""
        now = self._clock()
        demand: Demand = {}
        for device_id, latest in list(self._latest.items()):
            live = self._fleet.get(device_id)
            if live is None or live.status != "active":
                del self._latest[device_id]  # forgotten or revoked: never counted again
                continue
            report = latest.report
            if len(latest.seqs) < 2 or live.online is False:
                continue
            if live.birth is not None and live.birth.boot_id != report.boot_id:
                continue  # restarted since: that report describes an agent that no longer runs
            interval, share = report.interval_s, latest.share()
            if now - latest.received_at > (1.0 / share + STALE_INTERVALS - 1.0) * interval:
                continue
            weight = share / interval
            for pipeline in report.pipelines:
                for offer in pipeline.offered:
                    key = (offer.pool, pipeline.model)
                    requests, rows = demand.get(key, (0.0, 0.0))
                    demand[key] = (requests + offer.requests * weight, rows + offer.rows * weight)
        return demand
