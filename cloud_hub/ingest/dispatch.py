"""Validate each device message and apply it: the one core that every broker link feeds.

Every message is checked against `protocols`; the device id in the payload must equal the topic's; the
device must be known and active. Anything else is counted by reason and dropped. One bad message never
stops dispatch: `handle` never raises.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pydantic import ValidationError

from cloud_hub.fleet.live import LiveDevice, LiveFleet
from cloud_hub.fleet.ratelimit import DeviceRate
from cloud_hub.ingest.writer import BatchWriter
from cloud_hub.metrics import HubMetrics
from cloud_hub.store.summary import summarize
from protocols.common import ProtocolError
from protocols.messages import DEVICE_STATE, DeviceBirth, DeviceEvent, LoadReport, ReportedState
from protocols.topics import Topics

log = logging.getLogger(__name__)

MAX_CACHED_TOPICS = 1_000_000
# LoadReport.model_validate_json without the classmethod hop: the same validator, called per report.
_validate_report = LoadReport.__pydantic_validator__.validate_json


class Dropped(Exception):
    """A message that is not applied; `reason` is the metrics label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Dispatcher:
    """Turns (topic, payload) into state changes, DB writes and listener calls."""

    def __init__(
        self,
        topics: Topics,
        fleet: LiveFleet,
        writer: BatchWriter,
        metrics: HubMetrics,
        *,
        on_unknown: Callable[[str], None] | None = None,
        on_revoked: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topics = topics
        self.fleet = fleet
        self.writer = writer
        self.metrics = metrics
        self.on_unknown = on_unknown
        self.on_revoked = on_revoked  # a revoked device is connected: the broker rights cut it off again
        self.clock = clock
        self.rate: DeviceRate | None = None  # per-device telemetry limit (HubConfig.telemetry_max_per_s)
        # Topics repeat (a handful per device): remember parses instead of running the regexes again.
        self._parsed: dict[str, tuple[str, str]] = {}
        self._handlers: dict[str, Callable[[str, LiveDevice, bytes], None]] = {
            "telemetry": self._telemetry,
            "state": self._state,
            "reported": self._reported,
            "events": self._events,
        }

    def handle(self, topic: str, payload: bytes) -> None:
        """Apply one message; count and drop it if it is not acceptable. Never raises."""
        try:
            kind, device_id = self._split(topic)
            live = self.fleet.get(device_id)
            if live is None:
                if self.on_unknown is not None:
                    self.on_unknown(device_id)
                raise Dropped("unknown_device", f"message from unknown device {device_id!r}")
            if live.status != "active":
                if self.on_revoked is not None:
                    self.on_revoked(device_id)
                raise Dropped("revoked", f"message from revoked device {device_id!r}")
            if kind == "telemetry" and self.rate is not None and not self.rate.allow(device_id):
                raise Dropped("rate_limited", f"device {device_id!r} is over its telemetry rate")  # issue 15
            self._handlers[kind](device_id, live, payload)
            self.metrics.accepted[kind].inc()
        except Dropped as exc:
            self.metrics.drops[exc.reason].inc()
            log.debug("dropped message on %s: %s", topic, exc)
        except Exception:
            self.metrics.drops["internal"].inc()
            log.exception("failed to handle message on %s", topic)

    def _split(self, topic: str) -> tuple[str, str]:
        cached = self._parsed.get(topic)
        if cached is not None:
            return cached
        try:
            parsed = self.topics.parse(topic)
        except ProtocolError as exc:
            raise Dropped("bad_topic", str(exc)) from exc
        if parsed.kind not in self._handlers:
            raise Dropped("bad_topic", f"devices do not publish on {parsed.kind}")
        if len(self._parsed) < MAX_CACHED_TOPICS:
            self._parsed[topic] = (parsed.kind, parsed.device_id)
        return parsed.kind, parsed.device_id

    @staticmethod
    def _check_id(topic_id: str, payload_id: str) -> None:
        if topic_id != payload_id:
            raise Dropped("device_mismatch", f"payload device_id {payload_id!r} on topic of {topic_id!r}")

    def _telemetry(self, device_id: str, live: LiveDevice, payload: bytes) -> None:
        try:
            report: LoadReport = _validate_report(payload)
        except ValidationError as exc:
            raise Dropped("malformed", f"invalid load report: {exc.error_count()} errors") from exc
        self._check_id(device_id, report.device_id)
        boot_id, seq = report.boot_id, report.seq
        now = self.clock()
        if live.boot_id == boot_id and live.last_seq is not None and seq <= live.last_seq:
            # Seen before, or an older report resent because it was never acknowledged (it may have been lost
            # on the way): written again, so the store's (device, boot_id, seq) key skips it if stored, and
            # acknowledged after the commit either way. The live view keeps the newest report.
            self.metrics.duplicates.inc()
            self.writer.add_report((device_id, boot_id, seq, report.sent_at, now, summarize(report)))
            return
        live.boot_id, live.last_seq, live.last_seen, live.load = boot_id, seq, now, report
        summary = summarize(report)
        self.writer.add_report((device_id, boot_id, seq, report.sent_at, now, summary))
        self.writer.note_load(device_id, report, now, summary)
        self.fleet.notify("telemetry", device_id, report)

    def _state(self, device_id: str, live: LiveDevice, payload: bytes) -> None:
        try:
            state = DEVICE_STATE.validate_json(payload)
        except ValidationError as exc:
            raise Dropped("malformed", f"invalid state: {exc.error_count()} errors") from exc
        self._check_id(device_id, state.device_id)
        now = self.clock()
        if isinstance(state, DeviceBirth):
            if live.boot_id != state.boot_id:
                # A new agent start restarts the sequence numbers' scope.
                live.last_seq = None
            live.online, live.birth, live.boot_id, live.last_seen = True, state, state.boot_id, now
            self.writer.update_device(
                device_id,
                {
                    "online": True,
                    "last_seen": now,
                    "boot_id": state.boot_id,
                    "agent_version": state.agent_version,
                    "hardware": state.hardware.model_dump(mode="json"),
                    "models": [m.model_dump(mode="json") for m in state.models],
                },
            )
        else:
            live.online = False
            self.writer.update_device(device_id, {"online": False})
        self.fleet.notify("state", device_id, state)

    def _reported(self, device_id: str, live: LiveDevice, payload: bytes) -> None:
        try:
            reported = ReportedState.model_validate_json(payload)
        except ValidationError as exc:
            raise Dropped("malformed", f"invalid reported state: {exc.error_count()} errors") from exc
        self._check_id(device_id, reported.device_id)
        live.reported = reported
        self.writer.update_device(device_id, {"reported": reported.model_dump(mode="json")})
        self.fleet.notify("reported", device_id, reported)

    def _events(self, device_id: str, live: LiveDevice, payload: bytes) -> None:
        try:
            event = DeviceEvent.model_validate_json(payload)
        except ValidationError as exc:
            raise Dropped("malformed", f"invalid event: {exc.error_count()} errors") from exc
        self._check_id(device_id, event.device_id)
        live.events.append(event)
        del live.events[: -LiveFleet.MAX_EVENTS]
        if event.level != "info":
            log.info("device %s %s %s: %s", device_id, event.level, event.kind, event.message)
        self.fleet.notify("events", device_id, event)
