"""Ingest as one owned service: broker links, the dispatcher, the batch writer and registry refresh."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import Gauge

from cloud_hub.config import HubConfig
from cloud_hub.fleet.devices import DeviceService
from cloud_hub.fleet.live import LiveFleet
from cloud_hub.ingest.dispatch import Dispatcher
from cloud_hub.ingest.mqtt import BrokerUrl, MqttLink
from cloud_hub.ingest.writer import BatchWriter
from cloud_hub.metrics import HubMetrics
from cloud_hub.pki import HubIdentity
from cloud_hub.store import Store, devices
from protocols.topics import Topics

log = logging.getLogger(__name__)

MAX_UNKNOWN_LOOKUPS = 10_000


def subscriptions(topics: Topics, group: str) -> list[tuple[str, int]]:
    """What the hub subscribes to.

    Telemetry and events, the bulk, go through a shared subscription so replicas split them. State and
    reported are retained and low-rate: a broker never sends retained messages to a shared subscription
    (MQTT 5, 4.8.2), so every replica subscribes to them directly, learns the current state of the fleet
    on each (re)connect, and applies them idempotently.
    """
    return [
        (topics.shared(group, "telemetry"), 1),
        (topics.shared(group, "events"), 1),
        (topics.all_devices("state"), 1),
        (topics.all_devices("reported"), 1),
    ]


class IngestService:
    """Owns the background tasks of ingest; start with `start()`, stop with `aclose()`."""

    def __init__(
        self,
        config: HubConfig,
        *,
        identity: HubIdentity,
        store: Store,
        fleet: LiveFleet,
        device_service: DeviceService,
        metrics: HubMetrics,
    ) -> None:
        self.config = config
        self.identity = identity
        self.fleet = fleet
        self.device_service = device_service
        self.metrics = metrics
        self.topics = Topics(config.topic_prefix)
        self.writer = BatchWriter(
            store,
            metrics,
            max_rows=config.batch_max_rows,
            max_delay_s=config.batch_max_delay_ms / 1000,
            retention_s=config.telemetry_retention_s,
        )
        self.dispatcher = Dispatcher(self.topics, fleet, self.writer, metrics, on_unknown=self._unknown)
        self.links: list[MqttLink] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._unknown_ids: set[str] = set()
        self._lookup = asyncio.Event()

    async def start(self) -> None:
        """Load device statuses, then start the writer, the refresher and one link per broker."""
        await self.device_service.refresh_statuses()
        self._tasks.append(asyncio.create_task(self.writer.run(), name="ingest-writer"))
        self._tasks.append(asyncio.create_task(self._refresh_loop(), name="registry-refresh"))
        for url in self.config.brokers:
            broker = BrokerUrl.parse(url)
            ctx = self.identity.mqtt_ssl_context(self.config.broker_cafile) if broker.tls else None
            gauge = self.metrics.broker_connected.labels(broker=str(broker))

            def connected(up: bool, gauge: Gauge = gauge) -> None:
                gauge.set(1 if up else 0)

            link = MqttLink(
                broker,
                subscriptions=subscriptions(self.topics, self.config.share_group),
                on_message=self.dispatcher.handle,
                ssl_context=ctx,
                keepalive_s=self.config.mqtt_keepalive_s,
                on_connected=connected,
            )
            self.links.append(await link.start())

    async def wait_connected(self, timeout_s: float = 10.0) -> None:
        """Wait until every broker link is connected and subscribed."""
        for link in self.links:
            await link.wait_connected(timeout_s)

    async def aclose(self) -> None:
        """Close the links, write what is buffered, stop the tasks."""
        for link in self.links:
            await link.aclose()
        try:
            await self.writer.drain()
        except Exception:
            log.exception("final ingest flush failed")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _unknown(self, device_id: str) -> None:
        # A device provisioned through another replica: look it up soon (its next message is accepted).
        if len(self._unknown_ids) < MAX_UNKNOWN_LOOKUPS:
            self._unknown_ids.add(device_id)
            self._lookup.set()

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lookup.wait(), timeout=self.config.registry_refresh_s)
            try:
                if self._lookup.is_set():
                    self._lookup.clear()
                    await asyncio.sleep(0.05)  # gather a burst of unknown ids into one query
                    ids, self._unknown_ids = self._unknown_ids, set()
                    await self._lookup_ids(ids)
                else:
                    await self.device_service.refresh_statuses()
            except Exception:
                log.exception("device registry refresh failed")
                await asyncio.sleep(1.0)

    async def _lookup_ids(self, ids: set[str]) -> None:
        async with self.device_service.store.begin() as conn:
            self.fleet.load_statuses(await devices.statuses(conn, ids))
