"""The broker rig and the production mosquitto config, checked with real paho-mqtt v5 clients.

Denials are asserted on what the broker delivers, never on client return codes. "Nothing arrived" is
made deterministic with an ordered marker: after the forbidden message, an allowed one travels the same
path (same publisher or same subscriber connection); once the marker is in, the forbidden message
would have been in too, because mosquitto keeps the order of one client's messages.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from rig import DEFAULT_PREFIX, FLAVOURS, HUB_USERNAME, Flavour, Mosquitto, MosquittoFactory, TestPKI

TIMEOUT_S = 3.0
PREFIX = DEFAULT_PREFIX


def topic(device: str, kind: str) -> str:
    """`{prefix}/devices/{device}/{kind}`."""
    return f"{PREFIX}/devices/{device}/{kind}"


class Probe:
    """A paho v5 client (network loop in its own thread) that records what the broker delivers."""

    def __init__(self, broker: Mosquitto, client_id: str, context: ssl.SSLContext | None) -> None:
        self.broker = broker
        self.client_id = client_id
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,  # a probe reports a lost connection, it never hides it
        )
        if context is not None:
            self.client.tls_set_context(context)
        self.messages: list[mqtt.MQTTMessage] = []
        self.connack: ReasonCode | None = None
        self.disconnected = threading.Event()
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # paho callbacks (network thread)
    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self.connack = rc
            self._cond.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        self.disconnected.set()
        with self._cond:
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        with self._cond:
            self._subacks[mid] = codes
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    # test-side API
    def wait_until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait until `predicate()` holds (checked whenever this client receives something)."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout=TIMEOUT_S):
                raise AssertionError(f"timed out waiting for {what}; broker log:\n{self.broker.log_tail(15)}")

    def try_connect(self, will: tuple[str, bytes] | None = None) -> bool:
        """Connect and wait for the outcome: True on a successful CONNACK, False otherwise."""
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        try:
            self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        except (OSError, ssl.SSLError):
            return False
        self.client.loop_start()
        with self._cond:
            self._cond.wait_for(lambda: self.connack is not None or self.disconnected.is_set(), TIMEOUT_S)
        return self.connack is not None and not self.connack.is_failure and not self.disconnected.is_set()

    def connect(self, will: tuple[str, bytes] | None = None) -> Probe:
        """Connect or fail the test."""
        assert self.try_connect(will), f"connect failed: {self.connack}\n{self.broker.log_tail(15)}"
        return self

    def subscribe(self, topic_filter: str, qos: int = 1) -> list[ReasonCode]:
        """Subscribe and wait for the SUBACK; return its reason codes (granted or refused)."""
        rc, mid = self.client.subscribe(topic_filter, qos=qos)
        assert mid is not None, f"subscribe failed: {rc}"
        self.wait_until(lambda: mid in self._subacks, f"SUBACK for {topic_filter}")
        return self._subacks[mid]

    def publish(
        self, topic_name: str, payload: bytes, *, qos: int = 1, retain: bool = False, props: Properties | None = None
    ) -> None:
        """Publish; for QoS 1 wait until the broker has acknowledged it."""
        info = self.client.publish(topic_name, payload, qos=qos, retain=retain, properties=props)
        if qos:
            info.wait_for_publish(timeout=TIMEOUT_S)
            assert info.is_published(), f"no PUBACK for {topic_name}"

    def wait_for(self, topic_name: str, payload: bytes) -> mqtt.MQTTMessage:
        """Wait for a message on `topic_name` with `payload` and return it."""
        self.wait_until(lambda: self._find(topic_name, payload) is not None, f"{topic_name!r} {payload!r}")
        found = self._find(topic_name, payload)
        assert found is not None
        return found

    def _find(self, topic_name: str, payload: bytes) -> mqtt.MQTTMessage | None:
        return next((m for m in self.messages if m.topic == topic_name and m.payload == payload), None)

    def received(self, topic_name: str) -> list[bytes]:
        """Payloads received so far on `topic_name`."""
        with self._cond:
            return [bytes(m.payload) for m in self.messages if m.topic == topic_name]

    def close(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        self.client.disconnect()  # also ends the network thread's wait between reconnect attempts
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


ProbeFactory = Callable[..., Probe]


@pytest.fixture
def probe(mqtt_pki: TestPKI) -> Iterator[ProbeFactory]:
    """`probe(broker, cn, rogue=False, cert=True)`: an unconnected client; all are closed at teardown."""
    made: list[Probe] = []

    def factory(broker: Mosquitto, cn: str, *, rogue: bool = False, cert: bool = True) -> Probe:
        context = None
        if broker.flavour == "tls":
            context = mqtt_pki.ssl_context()
        elif broker.flavour == "mtls":
            context = mqtt_pki.ssl_context(cn if cert else None, rogue=rogue)
        # Unique client ids: a second connection with the same id would take the first one over.
        made.append(Probe(broker, f"{cn}-{len(made)}", context))
        return made[-1]

    yield factory
    for p in made:
        p.close()


def user_props(**values: str) -> Properties:
    """PUBLISH properties carrying MQTT v5 user properties."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho leaves it untyped
    props.UserProperty = list(values.items())
    return props


def user_properties(msg: mqtt.MQTTMessage) -> list[tuple[str, str]]:
    """The user properties a delivered message carries."""
    found: list[tuple[str, str]] = getattr(msg.properties, "UserProperty", [])
    return found


# --- every flavour ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_qos1_round_trip_with_user_properties(
    mosquitto_factory: MosquittoFactory, probe: ProbeFactory, flavour: Flavour
) -> None:
    broker = mosquitto_factory(flavour)
    hub = probe(broker, HUB_USERNAME).connect()
    device = probe(broker, "dev-a").connect()
    assert not hub.subscribe(f"{PREFIX}/devices/+/telemetry")[0].is_failure

    device.publish(topic("dev-a", "telemetry"), b'{"load": 0.5}', props=user_props(schema="telemetry/1"))

    msg = hub.wait_for(topic("dev-a", "telemetry"), b'{"load": 0.5}')
    assert msg.qos == 1
    assert not msg.retain
    assert msg.properties is not None
    assert user_properties(msg) == [("schema", "telemetry/1")]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_retained_message_reaches_a_later_subscriber(
    mosquitto_factory: MosquittoFactory, probe: ProbeFactory, flavour: Flavour
) -> None:
    broker = mosquitto_factory(flavour)
    device = probe(broker, "dev-a").connect()
    device.publish(topic("dev-a", "state"), b"online", retain=True, props=user_props(kind="birth"))

    hub = probe(broker, HUB_USERNAME).connect()
    hub.subscribe(f"{PREFIX}/devices/+/state")

    msg = hub.wait_for(topic("dev-a", "state"), b"online")
    assert msg.retain
    assert msg.properties is not None
    assert user_properties(msg) == [("kind", "birth")]


def test_restart_keeps_port_and_accepts_clients_again(mosquitto_plain: Mosquitto, probe: ProbeFactory) -> None:
    port, first_pid = mosquitto_plain.port, mosquitto_plain.pid
    mosquitto_plain.restart()
    assert mosquitto_plain.port == port
    assert mosquitto_plain.pid != first_pid
    assert mosquitto_plain.pids == [first_pid, mosquitto_plain.pid]
    probe(mosquitto_plain, "dev-a").connect()
    mosquitto_plain.kill()
    assert not mosquitto_plain.running


# --- mTLS + the production ACL ----------------------------------------------------------------------


def test_client_without_certificate_is_refused(mosquitto_mtls: Mosquitto, probe: ProbeFactory) -> None:
    hub = probe(mosquitto_mtls, HUB_USERNAME).connect()
    hub.subscribe(f"{PREFIX}/devices/#")
    anonymous = probe(mosquitto_mtls, "dev-a", cert=False)
    # Queued before connecting: paho sends it right after a successful CONNACK, if there ever is one.
    anonymous.client.publish(topic("dev-a", "telemetry"), b"from-anonymous", qos=1)

    assert not anonymous.try_connect()

    probe(mosquitto_mtls, "dev-a").connect().publish(topic("dev-a", "telemetry"), b"marker")
    hub.wait_for(topic("dev-a", "telemetry"), b"marker")
    assert b"from-anonymous" not in hub.received(topic("dev-a", "telemetry"))


@pytest.mark.parametrize("cn", ["dev-a", HUB_USERNAME])
def test_client_with_rogue_ca_certificate_is_refused(mosquitto_mtls: Mosquitto, probe: ProbeFactory, cn: str) -> None:
    hub = probe(mosquitto_mtls, HUB_USERNAME).connect()
    hub.subscribe(f"{PREFIX}/devices/#")
    rogue = probe(mosquitto_mtls, cn, rogue=True)
    rogue.client.publish(topic("dev-a", "telemetry"), b"from-rogue", qos=1)
    rogue.client.publish(topic("dev-a", "desired"), b"from-rogue", qos=1)

    assert not rogue.try_connect()

    probe(mosquitto_mtls, "dev-a").connect().publish(topic("dev-a", "telemetry"), b"marker")
    hub.wait_for(topic("dev-a", "telemetry"), b"marker")
    assert b"from-rogue" not in hub.received(topic("dev-a", "telemetry"))
    assert hub.received(topic("dev-a", "desired")) == []


def test_device_cannot_publish_as_another_device(mosquitto_mtls: Mosquitto, probe: ProbeFactory) -> None:
    hub = probe(mosquitto_mtls, HUB_USERNAME).connect()
    hub.subscribe(f"{PREFIX}/devices/#")
    device_a = probe(mosquitto_mtls, "dev-a").connect()

    for kind in ("telemetry", "state", "reported", "events", "desired"):
        device_a.publish(topic("dev-b", kind), b"spoofed")
    device_a.publish(topic("dev-a", "desired"), b"self-desired")  # a device never writes desired
    device_a.publish(topic("dev-a", "telemetry"), b"marker")

    hub.wait_for(topic("dev-a", "telemetry"), b"marker")
    assert [m.topic for m in hub.messages] == [topic("dev-a", "telemetry")]


def test_device_reads_only_its_own_desired_state(mosquitto_mtls: Mosquitto, probe: ProbeFactory) -> None:
    hub = probe(mosquitto_mtls, HUB_USERNAME).connect()
    device_a = probe(mosquitto_mtls, "dev-a").connect()
    device_b = probe(mosquitto_mtls, "dev-b").connect()
    device_a.subscribe(topic("dev-b", "desired"))
    device_a.subscribe(f"{PREFIX}/devices/+/desired")
    device_a.subscribe(topic("dev-b", "telemetry"))
    device_b.subscribe(topic("dev-b", "desired"))

    hub.publish(topic("dev-b", "desired"), b"rev-1 for b", retain=True)
    device_b.publish(topic("dev-b", "telemetry"), b"b-load")
    hub.publish(topic("dev-a", "desired"), b"rev-1 for a", retain=True)

    device_b.wait_for(topic("dev-b", "desired"), b"rev-1 for b")
    device_a.wait_for(topic("dev-a", "desired"), b"rev-1 for a")
    assert [m.topic for m in device_a.messages] == [topic("dev-a", "desired")]

    # Retained: a late subscriber gets its own desired state and not B's.
    late_a = probe(mosquitto_mtls, "dev-a").connect()
    late_a.subscribe(topic("dev-b", "desired"))
    late_a.subscribe(topic("dev-a", "desired"))
    late_a.wait_for(topic("dev-a", "desired"), b"rev-1 for a")
    assert [m.topic for m in late_a.messages] == [topic("dev-a", "desired")]


def test_device_shared_subscription_does_not_bypass_the_acl(mosquitto_mtls: Mosquitto, probe: ProbeFactory) -> None:
    hub = probe(mosquitto_mtls, HUB_USERNAME).connect()
    hub.subscribe(f"$share/hub/{PREFIX}/devices/+/telemetry")
    device_a = probe(mosquitto_mtls, "dev-a").connect()
    device_a.subscribe(f"$share/snoop/{PREFIX}/devices/+/telemetry")
    device_a.subscribe(f"$share/snoop/{PREFIX}/devices/#")
    device_a.subscribe(topic("dev-a", "desired"))
    device_b = probe(mosquitto_mtls, "dev-b").connect()

    device_b.publish(topic("dev-b", "telemetry"), b"b-load")
    hub.wait_for(topic("dev-b", "telemetry"), b"b-load")
    # Any copy for device A was queued when the hub's was; the marker is queued behind it.
    hub.publish(topic("dev-a", "desired"), b"marker")
    device_a.wait_for(topic("dev-a", "desired"), b"marker")
    # Its own desired comes twice (the $share/snoop/.../# filter matches it too); nothing of B's.
    assert {m.topic for m in device_a.messages} == {topic("dev-a", "desired")}


def test_will_on_another_devices_state_is_not_delivered(mosquitto_mtls: Mosquitto, probe: ProbeFactory) -> None:
    hub = probe(mosquitto_mtls, HUB_USERNAME).connect()
    hub.subscribe(f"{PREFIX}/devices/+/state")
    honest = probe(mosquitto_mtls, "dev-c")
    honest_connected = honest.try_connect(will=(topic("dev-c", "state"), b"offline"))
    spoofer = probe(mosquitto_mtls, "dev-a")
    spoofer_connected = spoofer.try_connect(will=(topic("dev-b", "state"), b"offline"))
    assert honest_connected

    for p in (spoofer, honest):  # die without DISCONNECT: the broker publishes the wills
        sock = p.client.socket()
        if isinstance(sock, socket.socket | ssl.SSLSocket):
            sock.shutdown(socket.SHUT_RDWR)
    hub.wait_for(topic("dev-c", "state"), b"offline")
    # Both wills go out as the broker notices the two dead sockets; give the spoofed one the same chance.
    if spoofer_connected:  # the broker names it by its CN (use_username_as_clientid), not the id it sent
        _wait_for_log(mosquitto_mtls, "dev-a")
    probe(mosquitto_mtls, "dev-c").connect().publish(topic("dev-c", "state"), b"marker", retain=True)
    hub.wait_for(topic("dev-c", "state"), b"marker")
    assert hub.received(topic("dev-b", "state")) == [], f"spoofer connected: {spoofer_connected}"


def _wait_for_log(broker: Mosquitto, client_id_prefix: str) -> None:
    """Wait until the broker log shows that a client whose id starts with the prefix went away."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        for line in broker.log_path.read_text(errors="replace").splitlines():
            if client_id_prefix in line and ("disconnect" in line or "closed" in line):
                return
        time.sleep(0.02)
    raise AssertionError(f"broker never dropped {client_id_prefix}:\n{broker.log_tail(15)}")


def test_crlfile_is_reloaded_on_sighup_for_new_connections(
    mosquitto_factory: MosquittoFactory, mqtt_pki: TestPKI, probe: ProbeFactory, tmp_path: Path
) -> None:
    crl = mqtt_pki.write_crl(tmp_path / "edgefleet.crl")
    broker = mosquitto_factory("mtls", crlfile=crl)
    live = probe(broker, "dev-a").connect()

    mqtt_pki.write_crl(crl, ["dev-a"])
    broker.reload()  # what `systemctl reload mosquitto` does

    assert not probe(broker, "dev-a").try_connect()
    assert probe(broker, "dev-b").try_connect()
    # 2.0.x checks the CRL only in the TLS handshake: a session opened before stays up.
    live.publish(topic("dev-a", "telemetry"), b"still here")
    assert not live.disconnected.is_set()


def test_only_the_hub_acks_telemetry_and_a_device_reads_only_its_own(
    mosquitto_mtls: Mosquitto, probe: ProbeFactory
) -> None:
    ack_a, ack_b = f"{topic('dev-a', 'telemetry')}/ack", f"{topic('dev-b', 'telemetry')}/ack"
    hub = probe(mosquitto_mtls, HUB_USERNAME).connect()
    device_a = probe(mosquitto_mtls, "dev-a").connect()
    device_b = probe(mosquitto_mtls, "dev-b").connect()
    device_a.subscribe(ack_a)
    device_a.subscribe(ack_b)
    device_a.subscribe(f"{PREFIX}/devices/+/telemetry/ack")
    device_b.subscribe(ack_b)
    device_b.publish(ack_a, b"forged by b")  # a device may not acknowledge anything, its own or another's
    device_a.publish(ack_a, b"forged by a")
    hub.publish(ack_b, b"ack for b")
    hub.publish(ack_a, b"ack for a")
    device_b.wait_for(ack_b, b"ack for b")
    device_a.wait_for(ack_a, b"ack for a")
    time.sleep(0.3)  # anything else would have arrived by now (a copy per matching subscription may)
    assert {(m.topic, m.payload) for m in device_a.messages} == {(ack_a, b"ack for a")}
