"""Pool demand: the overflow the fleet offers each cloud pool, per model, from each device's latest report.

Every load report says, per pipeline, how many requests (and rows) it sent to each pool over its interval
(`PipelineLoad.offered`). The demand of a pool is the sum over devices of those counts divided by the
report's interval: a sliding window made of the latest report of each device. A device drops out when it
goes offline, when its latest report is older than `STALE_INTERVALS` of its own interval (it stopped
reporting), or when that report is from an earlier boot than its last birth. Exported as Prometheus gauges
(cloud_hub/metrics.py) for autoscalers (deploy/k8s/pool-keda.yaml).
"""

from __future__ import annotations

from collections.abc import Iterable

from cloud_hub.fleet.live import LiveDevice

__all__ = ["STALE_INTERVALS", "Demand", "pool_demand"]

STALE_INTERVALS = 3.0
# (pool, model) -> (requests per second, rows per second)
Demand = dict[tuple[str, str], tuple[float, float]]


def pool_demand(devices: Iterable[LiveDevice], now: float) -> Demand:
    """Offered overflow per (pool, model) over the latest fresh report of each online device."""
    demand: Demand = {}
    for live in devices:
        report = live.load
        if report is None or live.online is False or live.status != "active" or live.last_seen is None:
            continue
        if live.birth is not None and live.birth.boot_id != report.boot_id:
            continue  # restarted since: that report describes an agent that no longer runs
        if now - live.last_seen > STALE_INTERVALS * report.interval_s:
            continue
        interval = report.interval_s
        for pipeline in report.pipelines:
            for offer in pipeline.offered:
                key = (offer.pool, pipeline.model)
                requests, rows = demand.get(key, (0.0, 0.0))
                demand[key] = (requests + offer.requests / interval, rows + offer.rows / interval)
    return demand
