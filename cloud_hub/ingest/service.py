"""Ingest as one owned service: subscriptions on the hub's broker links, the dispatcher, the batch writer
and registry refresh."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
from pathlib import Path

from cloud_hub.broker import BrokerLink, BrokerLinks
from cloud_hub.config import HubConfig
from cloud_hub.errors import ConfigError
from cloud_hub.fleet.devices import DeviceService
from cloud_hub.fleet.live import LiveFleet
from cloud_hub.fleet.ratelimit import DeviceRate
from cloud_hub.ingest.acks import AckPublisher
from cloud_hub.ingest.dispatch import Dispatcher
from cloud_hub.ingest.writer import BatchWriter
from cloud_hub.metrics import HubMetrics
from cloud_hub.store import Store, devices
from models.atomic import write_atomic
from protocols.topics import Topics

log = logging.getLogger(__name__)

MAX_UNKNOWN_LOOKUPS = 10_000
CLIENT_ID_FILE = "mqtt-client-id"
MAX_CLIENT_ID_SLOTS = 64


def hub_client_id(config: HubConfig) -> tuple[str, int | None]:
    """This replica's MQTT client id, and the fd of the lock that reserves it (close it when stopping).

    The configured id, else the one made at first start in the data dir. It must be stable across restarts
    (the broker keeps the session, and what it queued, under it) and unique per replica (a second connection
    with the same id takes the session over and cuts the first). So each id file is held with an exclusive
    lock while the hub runs; a second process on the same data dir takes the next file
    (`mqtt-client-id.1`, ...), made once and reused, instead of stealing the first one's session."""
    if config.mqtt_client_id:
        return config.mqtt_client_id, None
    for slot in range(MAX_CLIENT_ID_SLOTS):
        path: Path = config.data_dir / (CLIENT_ID_FILE if slot == 0 else f"{CLIENT_ID_FILE}.{slot}")
        if not path.exists():
            write_atomic(path, f"edgefleet-hub-{secrets.token_hex(8)}\n".encode("ascii"), 0o600)
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # another hub process on this data dir holds it
        client_id = path.read_text(encoding="ascii").strip()
        if client_id:
            return client_id, fd
        os.close(fd)
    raise ConfigError(f"no free MQTT client id in {config.data_dir}: set mqtt_client_id")


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
        broker: BrokerLinks,
        store: Store,
        fleet: LiveFleet,
        device_service: DeviceService,
        metrics: HubMetrics,
    ) -> None:
        self.config = config
        self.broker = broker
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
        self.acks = AckPublisher(self.topics, lambda: self.broker.links, metrics)
        self.writer.on_committed = self.acks.committed
        rights = broker.registrar  # acl: kick a revoked device that is back (cloud_hub/broker/kick.py)
        self.dispatcher = Dispatcher(
            self.topics, fleet, self.writer, metrics, on_unknown=self._unknown,
            on_revoked=rights.revoked_seen if rights is not None else None,
        )  # fmt: skip
        self.dispatcher.rate = DeviceRate(config.telemetry_max_per_s, config.telemetry_burst)  # issue 15
        self.client_id = ""
        self._id_lock: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._unknown_ids: set[str] = set()
        self._lookup = asyncio.Event()

    async def start(self) -> None:
        """Load device statuses, then start the writer, the refresher and one link per broker."""
        await self.device_service.refresh_statuses()
        self.client_id, self._id_lock = hub_client_id(self.config)
        persistent = self.config.mqtt_session_expiry_s > 0
        self._tasks.append(asyncio.create_task(self.writer.run(), name="ingest-writer"))
        self._tasks.append(asyncio.create_task(self._refresh_loop(), name="registry-refresh"))
        self._tasks.append(asyncio.create_task(self.acks.run(), name="telemetry-acks"))
        await self.broker.start(
            subscriptions=subscriptions(self.topics, self.config.share_group),
            on_message=self.dispatcher.handle,
            client_id=self.client_id,
            session_expiry_s=self.config.mqtt_session_expiry_s if persistent else None,
            manual_ack=True,
            receive_maximum=self.config.mqtt_receive_maximum,
            on_pending_ack=self.writer.wake,
        )
        self.writer.ack_sources.extend(link.take_acks for link in self.broker.links)

    @property
    def links(self) -> list[BrokerLink]:
        """The broker links ingest reads from (the hub's shared links)."""
        return self.broker.links

    async def wait_connected(self, timeout_s: float = 10.0) -> None:
        """Wait until every broker link is connected and subscribed."""
        await self.broker.wait_connected(timeout_s)

    async def aclose(self) -> None:
        """Write what is buffered (acknowledging it), close the links, stop the tasks."""
        try:
            await self.writer.drain()
            self.acks.publish_pending()
        except Exception:
            log.exception("final ingest flush failed")
        await self.broker.aclose()
        try:
            # What arrived meanwhile is written but not acknowledged: the broker sends it again (a duplicate
            # that the database's (device, boot, seq) key skips).
            await self.writer.drain()
        except Exception:
            log.exception("final ingest flush failed")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._id_lock is not None:
            os.close(self._id_lock)
            self._id_lock = None

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
