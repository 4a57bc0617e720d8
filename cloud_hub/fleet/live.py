"""The live view of the fleet in memory: who may talk, who is online, and each device's latest load."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from protocols.messages import DeviceBirth, DeviceEvent, LoadReport, ReportedState

log = logging.getLogger(__name__)

Status = Literal["active", "revoked"]
Listener = Callable[[str, object], None]


@dataclass(slots=True)
class LiveDevice:
    """What this hub replica has seen of one device since it started."""

    status: str
    online: bool | None = None
    last_seen: float | None = None
    boot_id: str | None = None
    last_seq: int | None = None
    birth: DeviceBirth | None = None
    load: LoadReport | None = None
    reported: ReportedState | None = None
    events: list[DeviceEvent] = field(default_factory=list)


class LiveFleet:
    """Registry status per device id plus live state; listeners let other services (rollouts) react."""

    MAX_EVENTS = 50

    def __init__(self) -> None:
        self.devices: dict[str, LiveDevice] = {}
        self._listeners: dict[str, list[Listener]] = {}

    # --- registry -------------------------------------------------------------------------------

    def set_status(self, device_id: str, status: str) -> None:
        """Record the registry status of a device (provisioned, revoked, or read from the store)."""
        live = self.devices.get(device_id)
        if live is None:
            self.devices[device_id] = LiveDevice(status=status)
        else:
            live.status = status
            if status == "revoked":
                live.online = False

    def load_statuses(self, statuses: dict[str, str]) -> None:
        """Merge a full status map read from the store (devices provisioned or revoked by other replicas)."""
        for device_id, status in statuses.items():
            self.set_status(device_id, status)

    def get(self, device_id: str) -> LiveDevice | None:
        """The live record of a device, or None if this replica does not know it."""
        return self.devices.get(device_id)

    def online_count(self) -> int:
        """Devices whose last state message was a birth."""
        return sum(1 for d in self.devices.values() if d.online and d.status == "active")

    # --- listeners (the rollout orchestrator of issue 6 hooks in here) --------------------------

    def subscribe(self, kind: Literal["state", "telemetry", "reported", "events"], listener: Listener) -> None:
        """Call `listener(device_id, message)` for every accepted message of `kind`."""
        self._listeners.setdefault(kind, []).append(listener)

    def notify(self, kind: str, device_id: str, message: object) -> None:
        """Run the listeners of `kind`; one failing listener does not stop the others or ingest."""
        for listener in self._listeners.get(kind, ()):
            try:
                listener(device_id, message)
            except Exception:
                log.exception("listener %r failed on a %s message of %s", listener, kind, device_id)

    def ids(self, status: str | None = None) -> Iterable[str]:
        """Known device ids, optionally with one status."""
        return (i for i, d in self.devices.items() if status is None or d.status == status)
