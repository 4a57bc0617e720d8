"""Pool demand: the overflow the fleet offers each cloud pool, per model, from each device's latest report.

Every load report says, per pipeline, how many requests (and rows) it sent to each pool over its interval
(`PipelineLoad.offered`). A replica's demand figure for a pool is the sum over devices of those counts in the
device's latest report it received, divided by the report's interval and weighted by this replica's share of
the device's reports: replicas split telemetry round-robin (a shared subscription), so a replica that sees
seq 5 then seq 7 gets half of them and counts half. Summed over replicas (`sum()` in PromQL) that is the
fleet's offered overflow; with one replica the share is 1. The first report a replica sees of a device (or of
a new boot) shows no share yet and is not counted; the next one is.

A device drops out when it goes offline or is revoked, when its latest report here is older than
`STALE_INTERVALS` of the time this replica's reports of it are apart (it stopped reporting), or when that
report is from an earlier boot than its last birth. Exported as Prometheus gauges (cloud_hub/metrics.py) for
autoscalers (deploy/k8s/pool-keda.yaml).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cloud_hub.fleet.live import LiveFleet
from protocols.messages import LoadReport

__all__ = ["STALE_INTERVALS", "Demand", "PoolDemand"]

STALE_INTERVALS = 3.0
# (pool, model) -> (requests per second, rows per second)
Demand = dict[tuple[str, str], tuple[float, float]]


@dataclass(slots=True)
class _Latest:
    report: LoadReport
    received_at: float
    gap: int  # seqs between this report and the previous one this replica saw of the same boot; 0 = unknown


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
        gap = 0
        if old is not None and old.report.boot_id == message.boot_id and message.seq > old.report.seq:
            gap = message.seq - old.report.seq
        self._latest[device_id] = _Latest(message, self._clock(), gap)

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
            if latest.gap == 0 or live.online is False:
                continue
            if live.birth is not None and live.birth.boot_id != report.boot_id:
                continue  # restarted since: that report describes an agent that no longer runs
            interval = report.interval_s
            if now - latest.received_at > (latest.gap + STALE_INTERVALS - 1.0) * interval:
                continue
            weight = 1.0 / (latest.gap * interval)
            for pipeline in report.pipelines:
                for offer in pipeline.offered:
                    key = (offer.pool, pipeline.model)
                    requests, rows = demand.get(key, (0.0, 0.0))
                    demand[key] = (requests + offer.requests * weight, rows + offer.rows * weight)
        return demand
