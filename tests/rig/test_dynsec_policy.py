"""The dynamic-security roles (cloud_hub/broker/dynsec.py) grant exactly what deploy/mosquitto/acl.template
grants, plus the SUBSCRIBE rights the acl_file cannot express; and the plugin enforces them on 2.0.11."""

from __future__ import annotations

from pathlib import Path

from cloud_hub.broker import dynsec
from deploy.local.broker_config import render_acl
from rig import DEFAULT_PREFIX, HUB_USERNAME, MosquittoFactory, TestPKI
from rig.test_broker_smoke import Probe

DEVICE = "dev-a"


def _acl_rules(tmp_path: Path) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(device rules with %u -> DEVICE, hub rules) of the rendered acl.template as (access, topic)."""
    device, hub, user = set(), set(), None
    for line in render_acl(tmp_path / "acl", DEFAULT_PREFIX).read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user":
            user = words[1]
        elif words[0] == "pattern":
            device.add((words[1], words[2].replace("%u", DEVICE)))
        elif words[0] == "topic" and user == HUB_USERNAME:
            hub.add((words[1], words[2]))
    return device, hub


def _as_rules(acls: list[dynsec.Acl]) -> set[tuple[str, str]]:
    kinds = {"publishClientSend": "write", "publishClientReceive": "read"}
    return {(kinds[a["acltype"]], a["topic"]) for a in acls if a["acltype"] in kinds and a["allow"]}


def test_dynsec_roles_match_the_acl_template(tmp_path: Path) -> None:
    device, hub = _acl_rules(tmp_path)
    device_acls = dynsec.device_acls(DEFAULT_PREFIX, DEVICE)
    assert _as_rules(device_acls) == device
    # Every topic a device may read it may subscribe to, literally (no wildcard, no $share).
    reads = {t for a, t in device if a == "read"}
    assert {a["topic"] for a in device_acls if a["acltype"] == "subscribeLiteral"} == reads
    assert _as_rules(dynsec.hub_acls(DEFAULT_PREFIX)) == hub


def test_dynsec_broker_refuses_a_devices_share_subscription_and_keeps_the_ack_rule(
    mosquitto_factory: MosquittoFactory, mqtt_pki: TestPKI
) -> None:
    broker = mosquitto_factory("mtls", authz="dynsec", device_ids=(DEVICE,))
    hub = Probe(broker, HUB_USERNAME, mqtt_pki.ssl_context(HUB_USERNAME)).connect()
    device = Probe(broker, DEVICE, mqtt_pki.ssl_context(DEVICE)).connect()
    ack = f"{DEFAULT_PREFIX}/devices/{DEVICE}/telemetry/ack"
    try:
        assert not hub.subscribe(f"$share/edgefleet-hub/{DEFAULT_PREFIX}/devices/+/telemetry")[0].is_failure
        assert device.subscribe(f"$share/edgefleet-hub/{DEFAULT_PREFIX}/devices/+/telemetry")[0].is_failure
        assert device.subscribe(f"{DEFAULT_PREFIX}/devices/+/desired")[0].is_failure
        assert not device.subscribe(ack)[0].is_failure
        hub.publish(ack, b"ack")
        device.publish(ack, b"forged")  # a device never writes an ack: dropped
        hub.publish(ack, b"marker")
        device.wait_for(ack, b"marker")
        assert device.received(ack) == [b"ack", b"marker"]
    finally:
        hub.close()
        device.close()
