"""The device registry as operators see it: list, show, revoke (with the CRL the broker loads)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

from cloud_hub.broker.registrar import BrokerRights
from cloud_hub.errors import HubError
from cloud_hub.fleet.live import LiveFleet
from cloud_hub.pki import HubIdentity
from cloud_hub.store import DeviceRecord, Store, devices, telemetry

log = logging.getLogger(__name__)

APPROVAL_VALID_S = 3600.0


class DeviceService:
    """Reads come from the store (shared by replicas); revocation also updates the live view and the CRL."""

    def __init__(self, store: Store, identity: HubIdentity, fleet: LiveFleet) -> None:
        self.store = store
        self.identity = identity
        self.fleet = fleet
        self.registrar: BrokerRights | None = None  # retire (and disconnect) revoked devices on the brokers

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
        if self.registrar is not None:
            # dynsec: deleting its client disconnects it at once; acl: a takeover of its client id does
            # (kick.py). The CRL refuses its next handshake once the broker has re-read it.
            try:
                await self.registrar.retire(device_id)
            except HubError as exc:
                log.warning("device %s revoked; cutting it off the broker failed (retried at the next sync or "
                            "its next message): %s", device_id, exc)  # fmt: skip
        log.info("revoked device %s (certificate serial %s)", device_id, record.cert_serial)
        return record

    async def approve_reprovision(self, device_id: str, valid_s: float = APPROVAL_VALID_S) -> float:
        """Let `device_id` be re-provisioned once without proof of its key; the approval's expiry."""
        until = time.time() + valid_s
        async with self.store.begin() as conn:
            await devices.approve_reprovision(conn, device_id, until)
        log.info("re-provisioning of %s approved until %.0f", device_id, until)
        return until

    async def write_crl(self) -> int:
        """Rewrite data-dir/crl.pem from every revoked device; return how many serials it lists."""
        async with self.store.begin() as conn:
            revoked = await devices.revoked_serials(conn)
        entries = [(int(serial, 16), dt.datetime.fromtimestamp(at, dt.UTC)) for serial, at in revoked]
        self.identity.ca.write_crl(self.identity.paths.crl, entries)
        return len(entries)

    async def sync_broker(self) -> None:
        """Apply the whole registry to the brokers' dynamic-security registry (after a broker reconnect)."""
        if self.registrar is None or not self.registrar.keeps_registry:
            return
        async with self.store.begin() as conn:
            statuses = await devices.statuses(conn)
        active = [d for d, status in statuses.items() if status == devices.ACTIVE]
        try:
            await self.registrar.sync(active, [d for d, status in statuses.items() if status != devices.ACTIVE])
        except HubError as exc:
            log.warning("broker registry sync failed (retried at the next reconnect): %s", exc)
        else:
            log.info("broker registry in step: %d active devices", len(active))

    async def refresh_statuses(self) -> None:
        """Re-read every device's status (devices provisioned or revoked through another replica)."""
        async with self.store.begin() as conn:
            statuses = await devices.statuses(conn)
        self.fleet.load_statuses(statuses)
