"""Ingest against a real mosquitto (production mTLS config, hub CA) with real paho device clients."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hub_support import hub_config
from cryptography.hazmat.primitives.asymmetric import ec
from hub_devices import TOPICS, DeviceClient, birth, load_report, provision, write_identity
from rig import Mosquitto
from test_hub_api import Api

from cloud_hub.api import serve_hub
from cloud_hub.hub import Hub
from cloud_hub.pki import HubIdentity
from cloud_hub.store import devices, telemetry

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

        # Revoked: b's messages are counted and ignored from now on.
        await asyncio.to_thread(b.publish, TOPICS.telemetry("dev-b"), load_report("dev-b", 1))
        await until(lambda: hub.fleet.devices["dev-b"].last_seq == 1, what="b's first report")
        assert (await api.call("POST", "/api/v1/devices/dev-b/revoke"))[0] == 200
        for seq in (2, 3):
            await asyncio.to_thread(b.publish, TOPICS.telemetry("dev-b"), load_report("dev-b", seq))
        await asyncio.to_thread(a.publish, topic, load_report("dev-a", 5))  # a marker after b's messages
        await until(lambda: hub.fleet.devices["dev-a"].last_seq == 5, what="marker")
        assert dropped(hub, "revoked") == 2
        assert hub.fleet.devices["dev-b"].last_seq == 1
        await hub.ingest.writer.drain()
        async with hub.store.begin() as conn:
            assert [r["seq"] for r in await telemetry.recent(conn, "dev-b")] == [1]
        text = await _metrics(api)
        assert 'edgefleet_hub_ingest_dropped_total{reason="revoked"} 2.0' in text
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
        await until(lambda: ingest_hub.fleet.devices["victim"].online is False, 1.5 * keepalive + 2, "offline")
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


async def _metrics(api: Api) -> str:
    import aiohttp
    from hub_devices import client_ssl

    async with aiohttp.ClientSession() as s, s.get(f"{api.url}/metrics", ssl=client_ssl(api.cafile)) as r:
        return await r.text()


_DEVICE_SCRIPT = """
import ssl, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
sys.path.insert(0, "tests/cloud_hub")
from hub_devices import TOPICS, birth, will
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
