"""Issue 15 item 5: a revoked device is cut off the broker at once, and cannot come back.

The broker runs the production config with its CRL (on by default) and the hub revokes through the
operator API. With the dynamic-security plugin the hub deletes the device's dynsec client, which
disconnects it at once; reconnecting before the broker re-reads the CRL gets it a connection with no
rights at all. With acl_file the hub takes the device's client id over with a certificate it mints for
the CN (cloud_hub/broker/kick.py), which disconnects it at once; reconnecting before the broker re-reads
the CRL gets it a connection with its rights (acl_file grants by CN), which the hub cuts again as soon as
the device publishes. After SIGHUP (`systemctl reload mosquitto`) its TLS handshake is refused.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from attack_support import Client, claim, enrol, ingesting_hub, operator, stored_reports
from devices_support import TOPICS, load_report
from test_sec_shared_subscription import hub_ca_broker

from cloud_hub.pki import HubIdentity
from deploy.local.broker_config import Authz

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("authz", ["acl", "dynsec"])
async def test_revoked_device_is_disconnected_at_once_and_refused_after_reload(
    hub_data_dir: Path, hub_identity: HubIdentity, tmp_path: Path, mosquitto_bin: str, authz: Authz
) -> None:
    broker = hub_ca_broker(tmp_path, mosquitto_bin, hub_identity, authz, crl=True)
    try:
        async with ingesting_hub(hub_data_dir, tmp_path / "hub.db", broker, broker_authz=authz) as hub:
            token = await claim(hub, uses=2)
            certs = {d: await enrol(hub, token, d, tmp_path) for d in ("line-1", "dock-1")}
            cafile = hub.identity.paths.ca_cert
            rogue = Client(broker, cafile, certs["line-1"], "line-1")
            rogue.publish(TOPICS.telemetry("line-1"), load_report("line-1", 0))
            await _until_stored(hub, "line-1", 1)

            started = time.monotonic()
            status, _ = await operator(hub).call("POST", "/api/v1/devices/line-1/revoke")
            assert status == 200
            cut = await asyncio.to_thread(rogue.disconnected.wait, 5.0)
            print(f"revocation ({authz}): connected device cut off: {cut}, "
                  f"after {time.monotonic() - started:.2f} s")  # fmt: skip
            assert cut
            rogue.close()

            # Back before the broker re-read the CRL: the handshake passes.
            back = Client(broker, cafile, certs["line-1"], "line-1")
            if authz == "dynsec":  # no rights left
                assert back.subscribe(TOPICS.desired("line-1"))[0].is_failure
                back.publish(TOPICS.telemetry("line-1"), load_report("line-1", 1))
            else:  # acl_file grants by CN: what it sends reaches the hub (and is dropped), which cuts it again
                assert not back.subscribe(TOPICS.desired("line-1"))[0].is_failure
                started = time.monotonic()
                back.publish(TOPICS.telemetry("line-1"), load_report("line-1", 1))
                again = await asyncio.to_thread(back.disconnected.wait, 5.0)
                print(f"revocation (acl): reconnected device cut off again: {again}, "
                      f"after {time.monotonic() - started:.2f} s")  # fmt: skip
                assert again
            back.close()
            honest = Client(broker, cafile, certs["dock-1"], "dock-1")
            honest.publish(TOPICS.telemetry("dock-1"), load_report("dock-1", 0))  # the marker behind it
            await _until_stored(hub, "dock-1", 1)
            assert await stored_reports(hub, "line-1") == 1

            broker.reload()  # what the operator's `systemctl reload mosquitto` does after the CRL is copied
            with pytest.raises(TimeoutError):
                Client(broker, cafile, certs["line-1"], "line-1")
            Client(broker, cafile, certs["dock-1"], "dock-1-again").close()  # the others still connect
            honest.close()
    finally:
        broker.stop()


async def _until_stored(hub: object, device_id: str, count: int) -> None:
    for _ in range(200):
        if await stored_reports(hub, device_id) >= count:  # type: ignore[arg-type]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{device_id}: {count} reports never stored")
