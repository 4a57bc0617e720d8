"""Prometheus view of telemetry delivery: reports by outcome, what waits for the hub's ack, spool drops."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_agent.fleet.telemetry import TelemetryReporter

__all__ = ["TelemetryCollector"]


class TelemetryCollector(Collector):
    """Exports the reporter's counters and its spool's at scrape time (since the agent started)."""

    def __init__(self, reporter: TelemetryReporter) -> None:
        self._reporter = reporter

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        r = self._reporter
        reports = CounterMetricFamily(
            "edgefleet_fleet_telemetry_reports",
            "Load reports by outcome: spooled (made, on disk), sent (first send), resent (sent again, not yet "
            "acknowledged), acked (stored by the hub, deleted), dropped (oldest dropped because the spool was full, "
            "never acknowledged), corrupt (unreadable on disk), failed (could not be made).",
            labels=["outcome"],
        )
        for outcome, value in (
            ("spooled", r.spooled),
            ("sent", r.sent),
            ("resent", r.resent),
            ("acked", r.acked),
            ("dropped", r.spool.dropped),
            ("corrupt", r.spool.corrupt),
            ("failed", r.failed_reports),
        ):
            reports.add_metric([outcome], value)
        yield reports
        yield CounterMetricFamily(
            "edgefleet_fleet_telemetry_ack_timeouts",
            "Times the oldest unacknowledged report waited its resend time in vain (then resent from the oldest).",
            r.timeouts,
        )
        yield CounterMetricFamily(
            "edgefleet_fleet_telemetry_bad_acks", "Ack messages dropped: invalid, or for another device.", r.bad_acks
        )
        yield GaugeMetricFamily(
            "edgefleet_fleet_telemetry_unacked", "Reports on disk the hub has not acknowledged.", r.unacked
        )
        yield GaugeMetricFamily("edgefleet_fleet_telemetry_spool_bytes", "Bytes the spool holds.", r.spool.size_bytes)
