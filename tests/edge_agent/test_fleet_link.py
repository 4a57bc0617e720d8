"""The agent's MQTT link against a real mosquitto with the production mTLS config and ACL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fleet_support import HubWatcher, Received, link_settings, make_link
from rig import Mosquitto, TestPKI

from edge_agent.fleet.errors import AuthenticationFailed, LinkDown, PublishFailed
from edge_agent.fleet.mqtt_link import DeviceLink
from protocols.messages import DEVICE_STATE, DesiredState, DeviceBirth, DeviceOffline
from protocols.topics import Topics

T = Topics()
REPO = Path(__file__).resolve().parents[2]


def _desired(device_id: str, revision: int) -> bytes:
    return DesiredState(device_id=device_id, revision=revision, issued_at=time.time()).model_dump_json().encode()


def _states(got: list[Received], device_id: str) -> list[DeviceBirth | DeviceOffline]:
    return [DEVICE_STATE.validate_json(m.payload) for m in got if m.topic == T.state(device_id) and m.payload]


async def test_birth_is_published_after_subscribing_and_retained(mosquitto_mtls: Mosquitto, mqtt_pki: TestPKI) -> None:
    received: list[DesiredState] = []

    # The hub answers a birth at once with a (non-retained) desired state: the device only gets it if
    # it subscribed to `desired` before publishing the birth.
    def answer(watcher: HubWatcher, msg: Received) -> None:
        if msg.payload and DEVICE_STATE.validate_json(msg.payload).status == "online":
            watcher.client.publish(T.desired("dev-a"), _desired("dev-a", 7), qos=1)

    hub = HubWatcher(mosquitto_mtls, mqtt_pki, [T.state("dev-a")], on_message=answer)
    try:
        await hub.ready()
        async with make_link(mosquitto_mtls, mqtt_pki, "dev-a") as link:

            async def on_desired(desired: DesiredState) -> None:
                received.append(desired)

            link.on_desired(on_desired)
            await link.wait_connected(10)
            for _ in range(100):
                if received:
                    break
                await asyncio.sleep(0.05)
            assert [d.revision for d in received] == [7]
            # A subscriber that arrives later still learns the device is online (retained birth).
            late = HubWatcher(mosquitto_mtls, mqtt_pki, [T.state("dev-a")])
            try:
                got = await late.wait_for(bool)
                assert got[0].retain
                assert isinstance(_states(got, "dev-a")[0], DeviceBirth)
            finally:
                late.close()
    finally:
        hub.close()


async def test_clean_shutdown_publishes_offline_shutdown(mosquitto_mtls: Mosquitto, mqtt_pki: TestPKI) -> None:
    hub = HubWatcher(mosquitto_mtls, mqtt_pki, [T.state("dev-b")])
    try:
        await hub.ready()
        async with make_link(mosquitto_mtls, mqtt_pki, "dev-b") as link:
            await link.wait_connected(10)
        assert link.state == "closed"
        got = await hub.wait_for(lambda g: len(_states(g, "dev-b")) >= 2)
        states = _states(got, "dev-b")
        assert isinstance(states[0], DeviceBirth)
        assert states[-1] == DeviceOffline(device_id="dev-b", reason="shutdown")
    finally:
        hub.close()
    late = HubWatcher(mosquitto_mtls, mqtt_pki, [T.state("dev-b")])
    try:
        got = await late.wait_for(bool)
        assert got[0].retain and _states(got, "dev-b") == [DeviceOffline(device_id="dev-b", reason="shutdown")]
    finally:
        late.close()


_AGENT_SCRIPT = """
import asyncio, sys, time
sys.path.insert(0, sys.argv[1])
from edge_agent.fleet.identity import client_ssl_context
from edge_agent.fleet.mqtt_link import LinkSettings, DeviceLink
from protocols.messages import DeviceBirth, HardwareSummary

host, port, cafile, certfile, keyfile, device_id = sys.argv[2:8]

def birth():
    hw = HardwareSummary(platform="other", cpu_count=1, ram_mb=1)
    return DeviceBirth(device_id=device_id, boot_id="b", agent_version="t", sent_at=time.time(),
                       hardware=hw, telemetry_interval_s=1.0)

async def main():
    ctx = client_ssl_context(cafile, certfile, keyfile)
    async with DeviceLink(LinkSettings(device_id, host, int(port), ctx, keepalive_s=5), birth) as link:
        await link.wait_connected(10)
        print("connected", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.slow
async def test_kill9_delivers_the_last_will_offline_lost(
    mosquitto_mtls: Mosquitto, mqtt_pki: TestPKI, tmp_path: Path
) -> None:
    script = tmp_path / "agent.py"
    script.write_text(_AGENT_SCRIPT)
    cert, key = mqtt_pki.client("dev-k")
    hub = HubWatcher(mosquitto_mtls, mqtt_pki, [T.state("dev-k")])
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(REPO),
            mosquitto_mtls.host,
            str(mosquitto_mtls.port),
            str(mqtt_pki.cafile),
            str(cert),
            str(key),
            "dev-k",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        await hub.ready()
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)
        assert line.strip() == b"connected"
        await hub.wait_for(lambda g: any(isinstance(s, DeviceBirth) for s in _states(g, "dev-k")))
        proc.kill()
        proc.wait(10)
        killed_at = time.monotonic()
        got = await hub.wait_for(lambda g: isinstance(_states(g, "dev-k")[-1], DeviceOffline), timeout_s=10)
        assert _states(got, "dev-k")[-1] == DeviceOffline(device_id="dev-k", reason="lost")
        assert time.monotonic() - killed_at < 1.5 * 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        hub.close()
    late = HubWatcher(mosquitto_mtls, mqtt_pki, [T.state("dev-k")])
    try:
        got = await late.wait_for(bool)
        assert got[0].retain and _states(got, "dev-k") == [DeviceOffline(device_id="dev-k", reason="lost")]
    finally:
        late.close()


@pytest.mark.parametrize("who", ["rogue-ca", "no-certificate"])
async def test_authentication_failure_stops_retrying(mosquitto_mtls: Mosquitto, mqtt_pki: TestPKI, who: str) -> None:
    cn = "dev-r" if who == "rogue-ca" else ""
    settings = link_settings(mosquitto_mtls, mqtt_pki, cn, rogue=True, backoff_initial_s=0.05, backoff_max_s=0.1)
    async with DeviceLink(settings, lambda: pytest.fail("no birth expected")) as link:
        with pytest.raises(AuthenticationFailed):
            await link.wait_connected(10)
        await asyncio.sleep(1.0)  # at 0.05-0.1 s backoff a retry loop would have made ~10 attempts by now
        assert link.state == "auth_failed"
        assert link.connect_attempts == 1
        with pytest.raises(LinkDown):
            await link.publish(T.events("dev-r"), b"x")


async def test_reconnects_with_backoff_and_births_again(mosquitto_mtls: Mosquitto, mqtt_pki: TestPKI) -> None:
    async with make_link(mosquitto_mtls, mqtt_pki, "dev-c") as link:
        await link.wait_connected(10)
        mosquitto_mtls.stop()
        await asyncio.sleep(1.5)
        assert link.state in ("backoff", "connecting")
        attempts = link.connect_attempts
        assert attempts >= 3  # it keeps trying while the broker is merely away
        with pytest.raises(LinkDown):
            await link.publish(T.telemetry("dev-c"), b"x")
        mosquitto_mtls.start()
        hub = HubWatcher(mosquitto_mtls, mqtt_pki, [T.state("dev-c")])
        try:
            await hub.ready()
            await link.wait_connected(10)
            assert link.connections == 2
            got = await hub.wait_for(lambda g: bool(_states(g, "dev-c")))
            assert isinstance(_states(got, "dev-c")[0], DeviceBirth)
            await link.publish(T.events("dev-c"), b"{}", qos=1)
        finally:
            hub.close()


async def test_bad_desired_messages_and_callbacks_never_stop_dispatch(
    mosquitto_mtls: Mosquitto, mqtt_pki: TestPKI
) -> None:
    good: list[int] = []

    async def broken(desired: DesiredState) -> None:
        raise RuntimeError("reconciler bug")

    async def record(desired: DesiredState) -> None:
        good.append(desired.revision)

    async with make_link(mosquitto_mtls, mqtt_pki, "dev-d") as link:
        link.on_desired(broken)
        link.on_desired(record)
        await link.wait_connected(10)
        hub = HubWatcher(mosquitto_mtls, mqtt_pki, [])
        try:
            await hub.ready()
            for payload in (b"{not json", _desired("dev-d", 1), _desired("someone-else", 2), _desired("dev-d", 3)):
                hub.client.publish(T.desired("dev-d"), payload, qos=1).wait_for_publish(5)
            for _ in range(100):
                if len(good) == 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            hub.close()
        assert good == [1, 3]
        assert link.malformed_desired == 2
        assert link.callback_errors == 2
        assert link.connected


async def test_device_cannot_publish_outside_its_topics(mosquitto_mtls: Mosquitto, mqtt_pki: TestPKI) -> None:
    hub = HubWatcher(mosquitto_mtls, mqtt_pki, [T.all_devices("telemetry")])
    try:
        await hub.ready()
        async with make_link(mosquitto_mtls, mqtt_pki, "dev-e") as link:
            await link.wait_connected(10)
            # MQTT 5: the broker answers PUBACK "Not authorized"; the test also asserts on delivery.
            with pytest.raises(PublishFailed, match="Not authorized"):
                await link.publish(T.telemetry("dev-f"), b"forged", qos=1)
            await link.publish(T.telemetry("dev-e"), b"mine", qos=1)
            got = await hub.wait_for(bool)
            await asyncio.sleep(0.2)
        assert [m.payload for m in hub.received()] == [b"mine"]
        assert got[0].topic == T.telemetry("dev-e")
    finally:
        hub.close()
