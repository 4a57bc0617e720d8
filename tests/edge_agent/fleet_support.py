"""Helpers for the fleet tests (no tests here): a hub-side watcher over real MQTT, links, probe roots."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from rig import HUB_USERNAME, Mosquitto, TestPKI

from edge_agent.fleet.mqtt_link import DeviceLink, LinkSettings
from protocols.messages import DeviceBirth, HardwareSummary, LoadReport, TelemetryAck

HARDWARE = HardwareSummary(platform="x86_64-cpu", model="test", cpu_count=2, ram_mb=2048)


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


class HubWatcher:
    """A hub-identity MQTT client on paho's own thread that records what it receives and reconnects."""

    def __init__(
        self,
        broker: Mosquitto,
        pki: TestPKI,
        topics: list[str],
        *,
        cn: str = HUB_USERNAME,
        persistent: bool = False,
        on_message: Callable[[HubWatcher, Received], None] | None = None,
        ack_telemetry: bool = False,
    ) -> None:
        self.topics = topics
        # Stands in for the hub's end-to-end acks (the hub is a boundary here): every load report received
        # is acknowledged at once on its device's telemetry/ack topic while `acking` is true.
        self.acking = ack_telemetry
        self.messages: list[Received] = []
        self.connects = 0
        self.subacks = 0
        self._hook = on_message
        self._lock = threading.Lock()
        self._persistent = persistent
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"watcher-{id(self)}", protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.tls_set_context(pki.ssl_context(cn))
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        props = Properties(PacketTypes.CONNECT)
        if persistent:
            props.SessionExpiryInterval = 3600
        self.client.connect(broker.host, broker.port, 30, clean_start=not persistent, properties=props)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connects += 1
        if not (self._persistent and flags.session_present):
            for topic in self.topics:
                client.subscribe(topic, options=SubscribeOptions(qos=1))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self.subacks += 1

    async def ready(self) -> HubWatcher:
        """Wait until connected and every subscription is acknowledged."""
        await self.wait_for(lambda _: self.connects > 0 and self.subacks >= len(self.topics))
        return self

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        rec = Received(msg.topic, bytes(msg.payload), bool(msg.retain))
        with self._lock:
            self.messages.append(rec)
        if self.acking and rec.topic.endswith("/telemetry"):
            report = LoadReport.model_validate_json(rec.payload)
            ack = TelemetryAck(
                device_id=report.device_id, boot_id=report.boot_id, ranges=((report.seq, report.seq),), sent_at=0.0
            )
            client.publish(f"{rec.topic}/ack", ack.model_dump_json(), qos=1)
        if self._hook is not None:
            self._hook(self, rec)

    def received(self, topic: str | None = None) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if topic is None or m.topic == topic]

    async def wait_for(self, predicate: Callable[[list[Received]], bool], timeout_s: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while True:
            got = self.received()
            if predicate(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"watcher timed out; got {[(m.topic, m.payload[:80]) for m in got]}")
            await asyncio.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def birth_factory(device_id: str, interval_s: float = 1.0) -> Callable[[], DeviceBirth]:
    def birth() -> DeviceBirth:
        return DeviceBirth(
            device_id=device_id,
            boot_id="test-boot",
            agent_version="test",
            sent_at=time.time(),
            hardware=HARDWARE,
            telemetry_interval_s=interval_s,
        )

    return birth


def link_settings(broker: Mosquitto, pki: TestPKI, cn: str, *, rogue: bool = False, **kw: Any) -> LinkSettings:
    kw.setdefault("backoff_initial_s", 0.2)
    kw.setdefault("backoff_max_s", 1.0)
    ctx = pki.ssl_context(cn, rogue=rogue) if cn else pki.ssl_context(None)
    return LinkSettings(device_id=cn or "nobody", host=broker.host, port=broker.port, ssl_context=ctx, **kw)


def make_link(broker: Mosquitto, pki: TestPKI, cn: str, **kw: Any) -> DeviceLink:
    return DeviceLink(link_settings(broker, pki, cn, **kw), birth_factory(cn))


def fake_probe_root(root: Path, *, busy: int = 100, total: int = 1000) -> Path:
    """A filesystem root for the probe (a boundary): /proc/meminfo, /proc/stat, a thermal zone, no GPU."""
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/meminfo").write_text("MemTotal:        2048000 kB\nMemAvailable:    1024000 kB\n")
    idle = total - busy
    (root / "proc/stat").write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\n")
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "type").write_text("x86_pkg_temp\n")
    (zone / "temp").write_text("45000\n")
    return root
