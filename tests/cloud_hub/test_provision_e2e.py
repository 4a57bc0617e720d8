"""End to end: claims by the real `cloud-hub` CLI, devices joined by the real `edge-agent provision`,
then their certificates on the production mTLS broker (deploy/mosquitto) with the hub ingesting."""

from __future__ import annotations

import asyncio
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import pytest_asyncio
from devices_support import TOPICS, DeviceClient, load_report
from hub_support import hub_config
from paho.mqtt.enums import CallbackAPIVersion
from rig import Mosquitto, TestPKI
from test_hub_ingest import until

from cloud_hub.app import Hub, serve_hub

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


async def sh(*args: str) -> str:
    """Run a Python module as a subprocess; its stdout (fails the test on a non-zero exit)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"{args}: {err.decode()}"
    return out.decode()


@pytest_asyncio.fixture
async def e2e_hub(hub_data_dir: Path, tmp_path: Path, hub_broker: Mosquitto) -> AsyncIterator[Hub]:
    config = hub_config(
        hub_data_dir, f"sqlite:///{tmp_path / 'hub.db'}", brokers=(f"mqtts://127.0.0.1:{hub_broker.port}",),
        device_broker_url=f"mqtts://localhost:{hub_broker.port}", batch_max_delay_ms=50,
    )  # fmt: skip
    async with serve_hub(config) as hub:
        assert hub.ingest is not None
        await hub.ingest.wait_connected(10)
        yield hub


def _connect(broker: Mosquitto, cafile: Path, cert: tuple[Path, Path], client_id: str) -> mqtt.ReasonCode | str:
    """Try to connect; the CONNACK reason, or the TLS error text."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.tls_set_context(ctx)
    try:
        client.connect(broker.host, broker.port, 10)
        result: list[mqtt.ReasonCode] = []
        client.on_connect = lambda _c, _u, _f, rc, _p: result.append(rc)
        deadline = time.monotonic() + 5
        while not result and time.monotonic() < deadline:
            if client.loop(0.1) != 0:
                return "connection dropped"
        return result[0] if result else "no CONNACK"
    except (OSError, ssl.SSLError) as exc:
        return f"refused: {exc}"
    finally:
        client.disconnect()


async def test_two_devices_by_claim_isolated_rogue_refused_revoked_ignored(
    e2e_hub: Hub, hub_broker: Mosquitto, hub_data_dir: Path, tmp_path: Path, mqtt_pki: TestPKI
) -> None:
    hub = e2e_hub
    out = await sh("cloud_hub", "--data-dir", str(hub_data_dir), "claims", "create", "--labels", "site=plant-a",
                   "--uses", "2", "--expires", "1h")  # fmt: skip
    join = out.strip().splitlines()[-1].split()
    assert join[:2] == ["edge-agent", "provision"], out
    dirs = {}
    for device_id in ("dev-a", "dev-b"):
        dirs[device_id] = tmp_path / f"identity-{device_id}"
        await sh("edge_agent", *join[1:], "--identity-dir", str(dirs[device_id]), "--device-id", device_id)
    listed = await sh("cloud_hub", "--data-dir", str(hub_data_dir), "devices", "list", "--json")
    assert '"dev-a"' in listed and '"dev-b"' in listed and "plant-a" in listed

    def cert(device_id: str) -> tuple[Path, Path]:
        return dirs[device_id] / "device.crt", dirs[device_id] / "device.key"

    cafile = dirs["dev-a"] / "ca.crt"
    a = await asyncio.to_thread(DeviceClient, hub_broker, cafile, cert("dev-a"), "dev-a")
    b = await asyncio.to_thread(DeviceClient, hub_broker, cafile, cert("dev-b"), "dev-b")
    try:
        # A subscribes to B's desired state; the hub publishes B's (retained). Only B receives it.
        a.client.subscribe(TOPICS.desired("dev-b"), qos=1)
        a.client.subscribe(TOPICS.desired("dev-a"), qos=1)
        b.client.subscribe(TOPICS.desired("dev-b"), qos=1)
        await asyncio.sleep(0.3)
        assert hub.ingest is not None
        link = hub.ingest.links[0]
        await link.publish(TOPICS.desired("dev-b"), b'{"for": "b"}', qos=1, retain=True)
        await link.publish(TOPICS.desired("dev-a"), b'{"for": "a"}', qos=1, retain=True)
        await until(lambda: len(b.received) == 1 and len(a.received) == 1, what="desired delivered")
        await asyncio.sleep(0.3)
        assert [m.topic for m in a.received] == [TOPICS.desired("dev-a")]
        assert [m.payload for m in b.received] == [b'{"for": "b"}']

        # A publishes on B's telemetry (the broker drops it), then on its own: the hub sees only A's.
        await asyncio.to_thread(a.publish, TOPICS.telemetry("dev-b"), load_report("dev-b", 7))
        await asyncio.to_thread(a.publish, TOPICS.telemetry("dev-a"), load_report("dev-a", 1))
        await until(lambda: hub.fleet.devices["dev-a"].last_seq == 1, what="A's report")
        await asyncio.sleep(0.2)
        assert hub.fleet.devices["dev-b"].last_seq is None

        # A certificate from another CA (same CN) is refused by the broker.
        refused = await asyncio.to_thread(_connect, hub_broker, cafile, mqtt_pki.client("dev-a"), "dev-a-rogue")
        assert isinstance(refused, str) and refused != "no CONNACK", refused

        # Revoked by the real CLI: the hub cuts B's open connection at once (acl_file: it takes B's client id
        # over, cloud_hub/broker/kick.py, which fires B's will) and ignores what B sends from then on.
        b.client.reconnect_delay_set(60, 60)  # B stays away (test_sec_revocation covers a comeback)
        await sh("cloud_hub", "--data-dir", str(hub_data_dir), "devices", "revoke", "dev-b")
        await until(lambda: not b.client.is_connected(), what="B cut off")
        await until(lambda: hub.metrics.dropped_count("revoked") == 1, what="B's will ignored")
        assert hub.fleet.devices["dev-b"].last_seq is None
    finally:
        a.close()
        b.close()

    # Once the broker has re-read the CRL the hub wrote, the revoked certificate cannot connect at all.
    await asyncio.to_thread(hub_broker.restart)
    refused = await asyncio.to_thread(_connect, hub_broker, cafile, cert("dev-b"), "dev-b")
    assert isinstance(refused, str), refused
    accepted = await asyncio.to_thread(_connect, hub_broker, cafile, cert("dev-a"), "dev-a")
    assert not isinstance(accepted, str) and not accepted.is_failure, accepted
