"""Hooks the fleet service into `edge-agent serve`: an aiohttp cleanup_ctx plus the shared PipelineStats."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_agent.fleet.config import FleetConfig
from edge_agent.fleet.mqtt_link import MqttLink
from edge_agent.fleet.service import FleetOptions, FleetService
from edge_agent.fleet.stats import PipelineStats
from edge_agent.http.keys import METRICS_KEY
from protocols.messages import InstalledModel

log = logging.getLogger(__name__)

STATS_KEY = web.AppKey("fleet_stats", PipelineStats)


class LinkCollector(Collector):
    """Exports the MQTT link's desired-state counters (and the reconciler's stale ones) at scrape time."""

    def __init__(self, link: MqttLink, stale: Any) -> None:
        self._link = link
        self._stale = stale  # the reconciler (its `stale_revisions`), or None

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
            ("stale", getattr(self._stale, "stale_revisions", 0)),
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


def attach_fleet(app: web.Application, fleet: FleetConfig, state_dir: Any, core_key: Any) -> PipelineStats:
    """Add the fleet link + telemetry to `app` as an owned background service; return the stats sink.

    The serving core owns the stats and calls `stats.record(pipeline, route, latency_s, ok)` for every request.
    """
    stats: PipelineStats = app[core_key].stats
    app[STATS_KEY] = stats
    options = FleetOptions(
        identity_dir=fleet.identity_dir,
        state_dir=state_dir,
        telemetry_interval_s=fleet.telemetry_interval_s,
        spool_max_reports=fleet.spool_max_reports,
        spool_max_bytes=fleet.spool_max_bytes,
        keepalive_s=fleet.keepalive_s,
        topic_prefix=fleet.topic_prefix,
        broker_url=fleet.broker_url,
    )

    def installed() -> list[InstalledModel]:
        core = app[core_key]
        return [
            InstalledModel(name=name, version=version, active=core.active_version(name) == version)
            for name, versions in core.models().items()
            for version in versions
        ]

    def pipelines() -> list[str]:
        return sorted(app[core_key].pipelines())

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        # Identity files and the hardware probe are read off the event loop; a missing identity is
        # logged and serving carries on without the fleet link (serving never depends on the broker).
        try:
            service = await asyncio.to_thread(
                FleetService.from_options, options, stats=stats, models=installed, pipelines=pipelines
            )
        except Exception:
            log.exception("fleet link disabled: cannot start it")
            yield
            return
        # The reconciler subscribes to desired state before the link starts, so no retained message is missed.
        from edge_agent.reconcile.wiring import build_reconciler

        reconciler = await asyncio.to_thread(build_reconciler, app, service, fleet.identity_dir, state_dir)
        app[METRICS_KEY].registry.register(LinkCollector(service.link, reconciler))
        await service.start()
        await reconciler.start()
        try:
            yield
        finally:
            await reconciler.aclose()
            await service.aclose()

    app.cleanup_ctx.append(ctx)
    return stats
