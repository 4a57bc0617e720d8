"""Prometheus view of the device link: desired-state counters, callback errors, connections."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_agent.fleet.mqtt_link import DeviceLink

__all__ = ["LinkCollector"]


class LinkCollector(Collector):
    """Exports the link's desired-state counters (and the reconciler's stale ones) at scrape time."""

    def __init__(self, link: DeviceLink, stale: Callable[[], int]) -> None:
        self._link = link
        self._stale = stale  # desired states ignored because their revision was not newer

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        link = self._link
        desired = CounterMetricFamily(
            "edgefleet_fleet_desired_messages",
            "Desired-state messages by outcome: received (valid, for this device), malformed (invalid or for "
            "another device), cleared (empty retained), queue_full, stale (revision not newer; ignored).",
            labels=["outcome"],
        )
        for outcome, value in (
            ("received", link.received_desired),
            ("malformed", link.malformed_desired),
            ("cleared", link.cleared_desired),
            ("queue_full", link.dropped_desired),
            ("stale", self._stale()),
        ):
            desired.add_metric([outcome], value)
        yield desired
        yield CounterMetricFamily(
            "edgefleet_fleet_callback_errors",
            "Desired-state or on-connect callbacks that raised.",
            link.callback_errors,
        )
        yield CounterMetricFamily("edgefleet_fleet_link_connections", "MQTT connections made.", link.connections)
        yield GaugeMetricFamily("edgefleet_fleet_link_connected", "1 while the MQTT link is up.", int(link.connected))
