"""The device registry as operators see it: list, show, revoke (with the CRL the broker loads)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

from cloud_hub.fleet.live import LiveFleet
from cloud_hub.pki import HubIdentity
from cloud_hub.store import DeviceRecord, Store, devices, telemetry

log = logging.getLogger(__name__)


class DeviceService:
    """Reads come from the store (shared by replicas); revocation also updates the live view and the CRL."""

    def __init__(self, store: Store, identity: HubIdentity, fleet: LiveFleet) -> None:
        self.store = store
        self.identity = identity
        self.fleet = fleet

    async def list(self, labels: Mapping[str, str] | None = None) -> list[DeviceRecord]:
        """Devices, optionally those carrying all of `labels`."""
        async with self.store.begin() as conn:
            return await devices.list_all(conn, labels)

    async def show(self, device_id: str, *, history: int = 20) -> dict[str, Any]:
        """One device with its most recent telemetry rows."""
        async with self.store.begin() as conn:
            record = await devices.require(conn, device_id)
            recent = await telemetry.recent(conn, device_id, limit=history)
        return {**record.to_json(), "recent_telemetry": recent}

    async def revoke(self, device_id: str) -> DeviceRecord:
        """Revoke the device: ingest ignores it from now on and the CRL lists its certificate."""
        async with self.store.begin() as conn:
            record = await devices.revoke(conn, device_id, time.time())
        self.fleet.set_status(device_id, devices.REVOKED)
        await self.write_crl()
        log.info("revoked device %s (certificate serial %s)", device_id, record.cert_serial)
        return record

    async def write_crl(self) -> int:
        """Rewrite data-dir/crl.pem from every revoked device; return how many serials it lists."""
        async with self.store.begin() as conn:
            revoked = await devices.revoked_serials(conn)
        entries = [(int(serial, 16), dt.datetime.fromtimestamp(at, dt.UTC)) for serial, at in revoked]
        self.identity.ca.write_crl(self.identity.paths.crl, entries)
        return len(entries)

    async def refresh_statuses(self) -> None:
        """Re-read every device's status (devices provisioned or revoked through another replica)."""
        async with self.store.begin() as conn:
            statuses = await devices.statuses(conn)
        self.fleet.load_statuses(statuses)
