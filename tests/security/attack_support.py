"""Helpers of the fleet-hardening attacks (issue 15): a real hub ingesting from the production broker,
devices provisioned by claim over HTTPS, raw paho clients holding their certificates, stored-row counts."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from devices_support import provision, write_identity
from hub_support import hub_config
from paho.mqtt.enums import CallbackAPIVersion
from rig import Mosquitto
from sec_support import HubApi

from cloud_hub.app import Hub, serve_hub
from cloud_hub.store import telemetry


@contextlib.asynccontextmanager
async def ingesting_hub(data_dir: Path, db: Path, broker: Mosquitto, **overrides: Any) -> AsyncIterator[Hub]:
    """A real hub (HTTPS, SQLite) ingesting from `broker`, linked and subscribed."""
    config = hub_config(
        data_dir, f"sqlite:///{db}", brokers=(f"mqtts://127.0.0.1:{broker.port}",),
        device_broker_url=f"mqtts://localhost:{broker.port}", batch_max_delay_ms=50, **overrides,
    )  # fmt: skip
    async with serve_hub(config) as hub:
        assert hub.ingest is not None
        await hub.ingest.wait_connected(10)
        yield hub


def operator(hub: Hub) -> HubApi:
    """Operator calls against `hub`."""
    return HubApi(hub.url, hub.identity.paths.ca_cert, hub.identity.paths.operator_token.read_text().strip())


async def claim(hub: Hub, uses: int = 5) -> str:
    """A claim token with `uses` uses."""
    status, body = await operator(hub).call("POST", "/api/v1/claims", {"uses": uses, "expires_in_s": 3600})
    assert status == 201, body
    return str(body["token"])


async def enrol(hub: Hub, token: str, device_id: str, directory: Path) -> tuple[Path, Path]:
    """Provision `device_id` with `token`; its (certfile, keyfile)."""
    status, body, key = await provision(hub.url, hub.identity.paths.ca_cert, token, device_id=device_id)
    assert status == 200, body
    return write_identity(directory / device_id, key, body["certificate_pem"])


async def stored_reports(hub: Hub, device_id: str) -> int:
    """Telemetry rows the hub's database holds for `device_id`."""
    async with hub.store.begin() as conn:
        return len(await telemetry.recent(conn, device_id, limit=1_000_000))


async def until(cond: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    """Poll `cond` until it holds."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Client:
    """A raw paho v5 client holding a certificate, its network loop in a thread; records what arrives."""

    def __init__(
        self,
        broker: Mosquitto,
        cafile: Path,
        cert: tuple[Path, Path],
        client_id: str,
        *,
        will: tuple[str, bytes] | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, reconnect_on_failure=False
        )
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile))
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        self.client.tls_set_context(ctx)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.messages: list[mqtt.MQTTMessage] = []
        self.subacks: dict[int, list[Any]] = {}
        self.connack: Any = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda _c, _u, _f, _rc, _p: self.disconnected.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append(m)
        self.client.on_subscribe = lambda _c, _u, mid, codes, _p: self.subacks.__setitem__(mid, codes)
        props = None
        if session_expiry_s:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = session_expiry_s
        self.client.connect(broker.host, broker.port, 30, clean_start=clean_start, properties=props)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise TimeoutError(f"{client_id} did not connect")

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connack = reason
        self.connected.set()

    def subscribe(self, topic_filter: str, qos: int = 1) -> list[Any]:
        """Subscribe and wait for the SUBACK's reason codes."""
        _rc, mid = self.client.subscribe(topic_filter, qos=qos)
        deadline = time.monotonic() + 10
        while mid not in self.subacks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no SUBACK for {topic_filter}")
            time.sleep(0.01)
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish; QoS 1 waits for the PUBACK."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(10)

    def close(self) -> None:
        """Disconnect cleanly (no will) and stop the loop."""
        self.client.disconnect()
        self.client.loop_stop()
