"""Hub replicas on the production broker: one certificate CN each (use_username_as_clientid), sharing
the load through a shared subscription (moved here from test_broker_smoke.py, which is at its size cap)."""

from __future__ import annotations

from rig import HUB_USERNAME, MosquittoFactory
from rig import test_broker_smoke as smoke
from rig.test_broker_smoke import PREFIX, ProbeFactory, topic

probe = smoke.probe  # the fixture


def test_hub_shared_subscription_receives_and_splits_telemetry(
    mosquitto_factory: MosquittoFactory, probe: ProbeFactory
) -> None:
    # One certificate per replica: the broker makes the CN the client id (use_username_as_clientid), so
    # two replicas with one CN would take each other's connection over.
    mosquitto_mtls = mosquitto_factory("mtls", hub_usernames=(HUB_USERNAME, f"{HUB_USERNAME}-2"))
    replicas = [probe(mosquitto_mtls, cn).connect() for cn in (HUB_USERNAME, f"{HUB_USERNAME}-2")]
    for replica in replicas:
        assert not replica.subscribe(f"$share/hub/{PREFIX}/devices/+/telemetry")[0].is_failure
    device_a = probe(mosquitto_mtls, "dev-a").connect()

    payloads = [f"t{i}".encode() for i in range(10)]
    for payload in payloads:
        device_a.publish(topic("dev-a", "telemetry"), payload)

    replicas[0].wait_until(
        lambda: sum(len(r.received(topic("dev-a", "telemetry"))) for r in replicas) == len(payloads),
        "all telemetry at the hub replicas",
    )
    got = [p for r in replicas for p in r.received(topic("dev-a", "telemetry"))]
    assert all(r.received(topic("dev-a", "telemetry")) for r in replicas)  # the load is split
    assert sorted(got) == sorted(payloads)  # each message to exactly one replica
