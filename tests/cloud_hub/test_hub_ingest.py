"""Ingest against a real mosquitto (production mTLS config, hub CA) with real paho device clients."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import ec
from devices_support import TOPICS, DeviceClient, birth, load_report, provision, write_identity
from hub_support import hub_config
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from rig import Mosquitto
from test_hub_api import Api

from cloud_hub.app import Hub, serve_hub
from cloud_hub.broker import BrokerLink, BrokerUrl
from cloud_hub.broker.kick import SessionKicker
from cloud_hub.broker.paho_client import RECV_CHUNK
from cloud_hub.ingest.service import hub_client_id
from cloud_hub.pki import HubIdentity
from cloud_hub.store import Store, devices, schema, telemetry

MOSQUITTO_SWEEP_S = 7.0


async def until(cond: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll `cond` until true."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def ingest_hub(hub_data_dir: Path, db_url: str, hub_broker: Mosquitto) -> AsyncIterator[Hub]:
    """A hub ingesting from the mTLS broker."""
    config = hub_config(hub_data_dir, db_url, brokers=(f"mqtts://127.0.0.1:{hub_broker.port}",), batch_max_delay_ms=50)
    async with serve_hub(config) as hub:
        assert hub.ingest is not None
        await hub.ingest.wait_connected(10)
        yield hub


async def _device(api: Api, token: str, device_id: str, broker: Mosquitto, tmp: Path, **kw: Any) -> DeviceClient:
    status, body, key = await provision(api.url, api.cafile, token, device_id=device_id)
    assert status == 200, body
    cert = write_identity(tmp / device_id, key, body["certificate_pem"])
    return await asyncio.to_thread(DeviceClient, broker, api.cafile, cert, device_id, **kw)


def dropped(hub: Hub, reason: str) -> float:
    return hub.metrics.dropped_count(reason)


async def test_reports_are_validated_stored_and_bad_ones_dropped(
    ingest_hub: Hub, hub_broker: Mosquitto, tmp_path: Path, hub_identity: HubIdentity
) -> None:
    hub = ingest_hub
    api = Api(hub)
    token = (await api.claim(uses=5, labels={"site": "plant-a"}))["token"]
    a = await _device(api, token, "dev-a", hub_broker, tmp_path)
    b = await _device(api, token, "dev-b", hub_broker, tmp_path)
    b_cert = (tmp_path / "dev-b" / "device.pem", tmp_path / "dev-b" / "device.key")
    try:
        await asyncio.to_thread(a.publish, TOPICS.state("dev-a"), birth("dev-a"), retain=True)
        await until(lambda: (live := hub.fleet.get("dev-a")) is not None and live.online is True, what="birth")
        topic = TOPICS.telemetry("dev-a")
        bad: list[bytes] = [
            b"not json",
            json.dumps({"v": 1, "device_id": "dev-a"}).encode(),  # schema violation
            load_report("dev-b", 99),  # payload names another device
            b"\xff\xfe",
        ]
        for seq in range(1, 4):
            await asyncio.to_thread(a.publish, topic, load_report("dev-a", seq), qos=0)
        for payload in bad:
            await asyncio.to_thread(a.publish, topic, payload)
        await asyncio.to_thread(a.publish, topic, load_report("dev-a", 2))  # duplicate
        await asyncio.to_thread(a.publish, topic, load_report("dev-a", 4, p99_ms=40.0))
        await until(lambda: hub.fleet.devices["dev-a"].last_seq == 4, what="seq 4 in memory")
        live = hub.fleet.devices["dev-a"]
        assert live.load is not None and live.load.pipelines[0].p99_ms == 40.0
        assert dropped(hub, "malformed") == 3
        assert dropped(hub, "device_mismatch") == 1
        assert hub.metrics.duplicates._value.get() == 1
        assert hub.ingest is not None
        await hub.ingest.writer.drain()
        async with hub.store.begin() as conn:
            rows = await telemetry.recent(conn, "dev-a")
            record = await devices.require(conn, "dev-a")
        assert [r["seq"] for r in rows] == [1, 2, 3, 4]
        assert rows[-1]["pipelines"]["detect"]["p99_ms"] == 40.0
        assert record.online and record.last_seq == 4 and record.boot_id == "boot-1"
        assert record.last_load is not None and record.last_load["pipelines"]["detect"]["rps"] == 5.0
        # The operator sees it through the API as well.
        _, listed = await api.call("GET", "/api/v1/devices?label=site=plant-a")
        assert {d["id"]: d["online"] for d in listed["devices"]} == {"dev-a": True, "dev-b": False}

        # Revoked: b is cut off the broker (acl_file: the hub takes its client id over, which fires its
        # will), and what it sends once back (the broker has not re-read the CRL) is counted and ignored.
        await asyncio.to_thread(b.publish, TOPICS.telemetry("dev-b"), load_report("dev-b", 1))
        await until(lambda: hub.fleet.devices["dev-b"].last_seq == 1, what="b's first report")
        b.client.reconnect_delay_set(60, 60)  # b stays away; b2 below is its comeback
        kicker = hub.broker.registrar
        assert isinstance(kicker, SessionKicker)
        kicker.min_interval_s = 60.0  # the hub's re-kick of b2 (tests/security/test_sec_revocation.py) waits
        assert (await api.call("POST", "/api/v1/devices/dev-b/revoke"))[0] == 200
        assert kicker.kicks == 1
        await until(lambda: not b.client.is_connected(), what="b cut off")
        b2 = await asyncio.to_thread(DeviceClient, hub_broker, api.cafile, b_cert, "dev-b")
        try:
            for seq in (2, 3):
                await asyncio.to_thread(b2.publish, TOPICS.telemetry("dev-b"), load_report("dev-b", seq))
        finally:
            b2.close()
        await asyncio.to_thread(a.publish, topic, load_report("dev-a", 5))  # a marker after b's messages
        await until(lambda: hub.fleet.devices["dev-a"].last_seq == 5, what="marker")
        assert dropped(hub, "revoked") == 3  # b's will (fired by the takeover) and b2's two reports
        assert hub.fleet.devices["dev-b"].last_seq == 1
        await hub.ingest.writer.drain()
        async with hub.store.begin() as conn:
            assert [r["seq"] for r in await telemetry.recent(conn, "dev-b")] == [1]
        text = await _metrics(api)
        assert 'edgefleet_hub_ingest_dropped_total{reason="revoked"} 3.0' in text
        # Every message above took the link's lean path (QoS 0/1 publishes without properties).
        assert hub.ingest.links[0].client.fast_publishes >= 14
    finally:
        a.close()
        b.close()


async def test_unknown_device_is_dropped(
    ingest_hub: Hub, hub_broker: Mosquitto, tmp_path: Path, hub_identity: HubIdentity
) -> None:
    # A certificate from the hub CA for an id the registry never provisioned (e.g. a restored backup).
    key = ec.generate_private_key(ec.SECP256R1())
    from cryptography.hazmat.primitives import serialization

    cert = hub_identity.ca.issue(key.public_key(), "ghost")
    files = write_identity(tmp_path / "ghost", key, cert.public_bytes(serialization.Encoding.PEM).decode())
    ghost = await asyncio.to_thread(DeviceClient, hub_broker, hub_identity.paths.ca_cert, files, "ghost")
    try:
        await asyncio.to_thread(ghost.publish, TOPICS.telemetry("ghost"), load_report("ghost", 1))
        await until(lambda: dropped(ingest_hub, "unknown_device") == 1, what="unknown counted")
        assert ingest_hub.fleet.get("ghost") is None
    finally:
        ghost.close()


async def test_reports_made_while_the_hub_is_down_arrive_once_after_it_restarts(
    hub_broker: Mosquitto, hub_data_dir: Path, db_url: str, tmp_path: Path
) -> None:
    """The hub's session outlives it: a stable client id (kept in the data dir), clean_start=False and a
    session expiry, so the broker queues QoS 1 telemetry while the hub is away and delivers it on return."""
    config = hub_config(hub_data_dir, db_url, brokers=(f"mqtts://127.0.0.1:{hub_broker.port}",), batch_max_delay_ms=50)
    n = 40
    async with serve_hub(config) as hub:
        assert hub.ingest is not None
        await hub.ingest.wait_connected(10)
        client_id = hub.ingest.client_id
        assert (hub_data_dir / "mqtt-client-id").read_text().strip() == client_id
        # A second hub process on the same data dir gets its own stable id instead of taking this session.
        other, lock = hub_client_id(config)
        assert other != client_id and (hub_data_dir / "mqtt-client-id.1").read_text().strip() == other
        assert lock is not None
        os.close(lock)
        api = Api(hub)
        token = (await api.claim())["token"]
        dev = await _device(api, token, "dev-q", hub_broker, tmp_path)
        await asyncio.to_thread(dev.publish, TOPICS.state("dev-q"), birth("dev-q"), retain=True)
        await asyncio.to_thread(dev.publish, TOPICS.telemetry("dev-q"), load_report("dev-q", 1))
        await until(lambda: hub.fleet.devices["dev-q"].last_seq == 1, what="seq 1 before the stop")
    try:
        # The hub is stopped: every report is acknowledged by the broker (QoS 1) and queued for the session.
        for seq in range(2, n + 2):
            await asyncio.to_thread(dev.publish, TOPICS.telemetry("dev-q"), load_report("dev-q", seq))
        async with serve_hub(config) as hub:
            assert hub.ingest is not None
            await hub.ingest.wait_connected(10)
            link = hub.ingest.links[0]
            assert hub.ingest.client_id == client_id and link.session_present is True
            await until(lambda: (d := hub.fleet.get("dev-q")) is not None and d.last_seq == n + 1, what="all")
            await hub.ingest.writer.drain()
            async with hub.store.begin() as conn:
                rows = await telemetry.recent(conn, "dev-q")
            assert [r["seq"] for r in rows] == list(range(1, n + 2))  # all of them, once each
            assert hub.metrics.duplicates._value.get() == 0
            assert link.client.fast_publishes >= n
    finally:
        dev.close()


@pytest.mark.parametrize("how", ["kill", "freeze"])
async def test_device_killed_shows_offline_within_one_and_a_half_keepalives(
    ingest_hub: Hub, hub_broker: Mosquitto, tmp_path: Path, how: str
) -> None:
    """kill -9 closes the socket (the broker sees it at once); a frozen process (SIGSTOP, like a cut cable)
    keeps it open, so only the keepalive timeout of 1.5 x K can fire the will."""
    api = Api(ingest_hub)
    token = (await api.claim())["token"]
    status, body, key = await provision(api.url, api.cafile, token, device_id="victim")
    assert status == 200
    certfile, keyfile = write_identity(tmp_path / "victim", key, body["certificate_pem"])
    keepalive = 2
    script = tmp_path / "device.py"
    script.write_text(_DEVICE_SCRIPT)
    proc = await asyncio.create_subprocess_exec(
        *[__import__("sys").executable, str(script), str(hub_broker.port), str(api.cafile), str(certfile),
          str(keyfile), str(keepalive)],
        stdout=asyncio.subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[2]),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line.strip() == b"ready", line
        await until(lambda: (d := ingest_hub.fleet.get("victim")) is not None and d.online is True, what="online")
        if how == "kill":
            proc.kill()  # SIGKILL: the socket closes without DISCONNECT, so the broker fires the will
            killed = time.monotonic()
            await proc.wait()
        else:
            proc.send_signal(signal.SIGSTOP)  # silent: no FIN, no PINGREQ
            killed = time.monotonic()
        # Wait as long as the bound asserted below allows (the freeze case includes mosquitto's 5 s sweep).
        bound = 1.5 * keepalive + (MOSQUITTO_SWEEP_S if how == "freeze" else 0.0)
        await until(lambda: ingest_hub.fleet.devices["victim"].online is False, bound + 2, "offline")
        took = time.monotonic() - killed
        print(f"offline seen {took:.2f} s after {how} (keepalive {keepalive} s, bound {1.5 * keepalive} s)")
        if how == "kill":
            # The kernel closes the socket: the broker fires the will at once, well inside 1.5 x K.
            assert took <= 1.5 * keepalive
        else:
            # mosquitto 2.0.x sweeps keepalives only every ~5 s of whole seconds (src/keepalive.c:
            # `last_keepalive_check + 5 < now`), so a silent loss shows within 1.5 x K + 6 s (+1 s rounding).
            assert took <= 1.5 * keepalive + MOSQUITTO_SWEEP_S
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_link_delivers_every_publish_exactly_on_lean_and_paho_paths(mosquitto_plain: Mosquitto) -> None:
    """The lean receive path (buffered reads, direct decode) against paho's own: same messages, in order,
    across buffer refills, QoS 1 acknowledged (else mosquitto stops after 20 in flight), reconnects."""
    got: list[tuple[str, bytes]] = []
    url = BrokerUrl("127.0.0.1", mosquitto_plain.port, tls=False)
    big = bytes(range(256)) * (3 * RECV_CHUNK // 256 + 7)  # spans several 64 KiB reads
    sent: list[tuple[str, bytes]] = []
    async with BrokerLink(url, subscriptions=[("t/#", 2)], on_message=lambda t, p: got.append((t, p))) as link:
        await link.wait_connected(10)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lean-pub", protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", mosquitto_plain.port)
        pub.loop_start()
        try:
            with_props = Properties(PacketTypes.PUBLISH)
            with_props.UserProperty = ("k", "v")
            plan: list[tuple[str, bytes, int, Properties | None]] = [
                *((f"t/q0/{i % 3}", f"zero {i}".encode(), 0, None) for i in range(300)),
                *((f"t/q1/{i % 3}", f"one {i}".encode() * (i % 50), 1, None) for i in range(200)),
                ("t/big", big, 1, None),
                ("t/q2", b"exactly once", 2, None),
                ("t/props", b"with a user property", 1, with_props),
                ("t/\u00e9t\u00e9", b"", 0, None),  # a UTF-8 topic, an empty payload
            ]

            def publish_all() -> None:
                for topic, payload, qos, props in plan:
                    pub.publish(topic, payload, qos=qos, properties=props).wait_for_publish(10)
                    sent.append((topic, payload))

            await asyncio.to_thread(publish_all)
            await until(lambda: len(got) >= len(sent), what="every message")
            by_topic = lambda pairs: {t: [p for tt, p in pairs if tt == t] for t, _ in pairs}  # noqa: E731
            assert by_topic(got) == by_topic(sent)
            assert len(got) == len(sent)
            # QoS 2 and the message with properties went through paho's own code.
            assert link.client.fast_publishes == len(sent) - 2

            # A broker restart: the link reconnects and reads the new socket from a clean buffer.
            got.clear()
            mosquitto_plain.restart()
            await until(lambda: not link.connected.is_set(), what="link down")
            await link.wait_connected(15)
            await asyncio.to_thread(pub.reconnect)
            await until(pub.is_connected, what="publisher back")
            await asyncio.to_thread(lambda: pub.publish("t/after", b"after restart", qos=1).wait_for_publish(10))
            await until(lambda: got == [("t/after", b"after restart")], what="message after restart")
        finally:
            pub.loop_stop()
            pub.disconnect()


async def test_encoded_rows_and_loads_round_trip(db_url: str) -> None:
    """insert_rows / apply_loads bind pre-encoded JSON at driver level; it reads back as JSON on both DBs."""
    now = time.time()
    base = {
        "labels": {}, "hardware": None, "claim_id": "c", "cert_serial": "1", "cert_fingerprint": "0" * 64,
        "cert_not_after": now + 1e6, "online": True, "created_at": now, "provisioned_at": now,
    }  # fmt: skip
    async with Store(db_url) as store:
        async with store.begin() as conn:
            await conn.execute(
                schema.devices.insert(),
                [{**base, "id": "d1", "status": "active"}, {**base, "id": "d2", "status": "revoked"}],
            )
            summary = telemetry.encode_json({"detect": {"p99_ms": 18.5, "local": 3}})
            await telemetry.insert_rows(conn, [("d1", "b", 2, 1.0, 2.0, summary), ("d1", "b", 1, 0.5, 1.5, summary)])
            await telemetry.insert_rows(conn, [("d1", "b", 1, 9.0, 9.0, "{}")])  # a stored key is skipped
            load = telemetry.encode_json({"sent_at": 1.0, "pipelines": {"detect": {"rps": 5.0}}})
            models = telemetry.encode_json([{"name": "m", "version": "1", "active": True}])
            await devices.apply_loads(conn, [(7.0, "b", 2, load, models, "d1")])
            await devices.apply_loads(conn, [(8.0, "b", 3, load, models, "d2")])  # revoked: untouched
        async with store.begin() as conn:
            rows = await telemetry.recent(conn, "d1")
            d1, d2 = await devices.require(conn, "d1"), await devices.require(conn, "d2")
    assert [(r["seq"], r["sent_at"]) for r in rows] == [(1, 0.5), (2, 1.0)]
    assert rows[0]["pipelines"] == {"detect": {"p99_ms": 18.5, "local": 3}}
    assert (d1.last_seen, d1.boot_id, d1.last_seq) == (7.0, "b", 2)
    assert d1.last_load == {"sent_at": 1.0, "pipelines": {"detect": {"rps": 5.0}}}
    assert d1.models == [{"name": "m", "version": "1", "active": True}]
    assert (d2.last_seen, d2.last_load) == (None, None)


async def _metrics(api: Api) -> str:
    import aiohttp
    from devices_support import client_ssl

    async with aiohttp.ClientSession() as s, s.get(f"{api.url}/metrics", ssl=client_ssl(api.cafile)) as r:
        return await r.text()


_DEVICE_SCRIPT = """
import ssl, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
sys.path.insert(0, "tests/cloud_hub")
from devices_support import TOPICS, birth, will
port, cafile, certfile, keyfile, keepalive = sys.argv[1:]
ctx = ssl.create_default_context(cafile=cafile)
ctx.load_cert_chain(certfile, keyfile)
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="victim", protocol=mqtt.MQTTv5)
c.tls_set_context(ctx)
c.will_set(TOPICS.state("victim"), will("victim"), qos=1, retain=True)
c.connect("127.0.0.1", int(port), int(keepalive))
c.loop_start()
c.publish(TOPICS.state("victim"), birth("victim"), qos=1, retain=True).wait_for_publish(10)
print("ready", flush=True)
time.sleep(600)
"""
