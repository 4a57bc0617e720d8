"""Issue 15 item 2: a device certificate cannot take over another client's id (use_username_as_clientid).

Attack: device line-1 (provisioned by claim, its own certificate) connects with the client id of device
dock-1 and then with the hub's, again and again, against the production broker config and a real hub
that ingests. Asserted on what the hub sees and stores: dock-1 never goes offline, the hub's link is never
cut, every report dock-1 sends meanwhile is stored, and the hub's persistent session stays the hub's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from attack_support import Client, claim, enrol, ingesting_hub, stored_reports, until
from devices_support import TOPICS, birth, load_report, will
from rig import Mosquitto

from cloud_hub.pki import HubIdentity

pytestmark = pytest.mark.slow

ROUNDS = 12


async def test_device_cannot_take_over_another_devices_or_the_hubs_client_id(
    hub_data_dir: Path, hub_identity: HubIdentity, hub_broker: Mosquitto, tmp_path: Path
) -> None:
    async with ingesting_hub(hub_data_dir, tmp_path / "hub.db", hub_broker) as hub:
        assert hub.ingest is not None
        token = await claim(hub, uses=2)
        dock = await enrol(hub, token, "dock-1", tmp_path)
        line = await enrol(hub, token, "line-1", tmp_path)
        cafile = hub.identity.paths.ca_cert
        victim = Client(hub_broker, cafile, dock, "dock-1", will=(TOPICS.state("dock-1"), will("dock-1")))
        victim.publish(TOPICS.state("dock-1"), birth("dock-1"), retain=True)
        await until(lambda: (d := hub.fleet.get("dock-1")) is not None and d.online is True, what="dock-1 online")
        offline_samples = 0
        hub_link_drops = 0
        seq = 0
        for _ in range(ROUNDS):
            for stolen in ("dock-1", hub.ingest.client_id, "edgefleet-hub"):
                attacker = Client(hub_broker, cafile, line, stolen, will=(TOPICS.state("dock-1"), will("dock-1")))
                assert not attacker.connack.is_failure  # connects, but as itself (client id = its CN)
                seq += 1
                victim.publish(TOPICS.telemetry("dock-1"), load_report("dock-1", seq))
                attacker.client.socket().close()  # dies without DISCONNECT: its own will fires, nobody else's
                attacker.client.loop_stop()
                device = hub.fleet.get("dock-1")
                offline_samples += int(device is None or device.online is not True)
                hub_link_drops += int(not all(link.connected.is_set() for link in hub.ingest.links))
        sent = seq
        stored = 0
        deadline = asyncio.get_running_loop().time() + 15
        while stored < sent and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            stored = await stored_reports(hub, "dock-1")
        print(f"client-id takeover: {ROUNDS * 3} attempts, dock-1 offline in {offline_samples} samples, "
              f"hub link down in {hub_link_drops}, {stored} of {sent} reports stored")  # fmt: skip
        assert not victim.disconnected.is_set(), "dock-1 was kicked off"
        assert offline_samples == 0
        assert hub_link_drops == 0
        assert stored == sent
        # The will the attacker left is line-1's own topic's business only: dock-1's state is still its birth.
        assert hub.fleet.get("dock-1").online is True  # type: ignore[union-attr]
        victim.close()


async def test_device_cannot_take_over_the_hubs_persistent_session(
    hub_identity: HubIdentity, hub_broker: Mosquitto, tmp_path: Path
) -> None:
    cafile = hub_identity.paths.ca_cert
    hub_cert = (hub_identity.paths.hub_cert, hub_identity.paths.hub_key)
    device = tmp_path / "device"
    device.mkdir()
    certs = {}
    for cn in ("dock-1", "line-1"):
        certs[cn] = (device / f"{cn}.pem", device / f"{cn}.key")
        hub_identity.issue_keypair(cn, *certs[cn], server=False)
    session = "edgefleet-hub-0123456789abcdef"
    hub = Client(hub_broker, cafile, hub_cert, session, clean_start=False, session_expiry_s=600)
    hub.subscribe(TOPICS.all_devices("telemetry"))
    hub.close()  # away; the broker keeps the session and queues QoS 1 messages for it

    attacker = Client(hub_broker, cafile, certs["line-1"], session, clean_start=False, session_expiry_s=600)
    sender = Client(hub_broker, cafile, certs["dock-1"], "dock-1")
    for seq in range(12):
        sender.publish(TOPICS.telemetry("dock-1"), load_report("dock-1", seq))
    attacker.close()

    back = Client(hub_broker, cafile, hub_cert, session, clean_start=False, session_expiry_s=600)
    await until(lambda: len(back.messages) == 12, what="the 12 queued reports at the hub")
    assert attacker.messages == []
    assert back.connack.is_failure is False
    back.close()
    sender.close()
