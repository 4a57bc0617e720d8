"""Storms of malformed, oversized and out-of-order MQTT messages at a real hub and a real agent (real broker).

Afterwards the target is alive, still serving, still dispatching, and every message is in its /metrics.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from devices_support import TOPICS, DeviceClient, birth, load_report, provision, write_identity
from hub_support import hub_config
from prometheus_client.parser import text_string_to_metric_families
from rig import Mosquitto
from sec_support import HubApi

from cloud_hub.app import serve_hub
from protocols.messages import DeviceEvent, ReportedState

pytestmark = pytest.mark.slow

MAX_PACKET = 1_048_576  # deploy/mosquitto/mosquitto.conf max_packet_size
SEED = 8


async def until(cond: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    """Poll `cond` until true."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def garbage(rng: random.Random, valid: bytes) -> bytes:
    """One malformed payload: random bytes, cut JSON, JSON of the wrong shape, or a mangled valid message."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 300))
    if kind == 1:
        return valid[: rng.randrange(1, len(valid))]
    if kind == 2:
        return rng.choice([b"null", b"[]", b"{}", b"1e999", b'"x"', b'{"v": 2}', b"\xff\xfe"])
    if kind == 3:
        doc = json.loads(valid)
        doc[rng.choice(sorted(doc))] = {"not": "this"}  # no field of any message takes such an object
        return json.dumps(doc).encode()
    if kind == 4:
        return b"[" * 5000 + b"]" * 5000  # deep nesting
    return json.dumps({**json.loads(valid), "extra": 1}).encode()


async def test_hub_survives_a_storm_and_counts_it(hub_data_dir: Path, hub_broker: Mosquitto, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    config = hub_config(
        hub_data_dir,
        f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}",
        brokers=(f"mqtts://127.0.0.1:{hub_broker.port}",),
        batch_max_delay_ms=50,
    )
    async with serve_hub(config) as hub:
        assert hub.ingest is not None
        await hub.ingest.wait_connected(10)
        api = HubApi(hub.url, hub.identity.paths.ca_cert, hub.identity.paths.operator_token.read_text().strip())
        _, claim = await api.call("POST", "/api/v1/claims", {"uses": 1})
        status, body, key = await provision(api.url, api.cafile, claim["token"], device_id="dev-storm")
        assert status == 200, body
        cert = write_identity(tmp_path / "dev-storm", key, body["certificate_pem"])
        device = await asyncio.to_thread(DeviceClient, hub_broker, api.cafile, cert, "dev-storm")
        try:
            await asyncio.to_thread(device.publish, TOPICS.state("dev-storm"), birth("dev-storm"), retain=True)
            await until(lambda: (live := hub.fleet.get("dev-storm")) is not None and live.online is True)

            valid = {
                "telemetry": load_report("dev-storm", 1),
                "state": birth("dev-storm"),
                "reported": ReportedState(device_id="dev-storm", revision=3, updated_at=1.0, converged=True)
                .model_dump_json()
                .encode(),
                "events": DeviceEvent(device_id="dev-storm", at=1.0, level="info", kind="a.b", message="m")
                .model_dump_json()
                .encode(),
            }
            sent_malformed = 0
            for _ in range(240):
                kind = rng.choice(sorted(valid))
                payload = garbage(rng, valid[kind])
                await asyncio.to_thread(device.publish, TOPICS.device("dev-storm", kind), payload, qos=1)  # type: ignore[arg-type]
                sent_malformed += 1
            # Oversized, up to what the broker allows: a JSON document of almost max_packet_size bytes.
            big = b'{"v": 1, "pad": "' + b"x" * (MAX_PACKET - 1024) + b'"}'
            for kind in ("telemetry", "reported", "events", "state"):
                await asyncio.to_thread(device.publish, TOPICS.device("dev-storm", kind), big, qos=1)  # type: ignore[arg-type]
                sent_malformed += 1
            # Payloads naming another device on our own topics.
            for kind in ("telemetry", "state"):
                other = load_report("dev-x", 5) if kind == "telemetry" else birth("dev-x")
                await asyncio.to_thread(device.publish, TOPICS.device("dev-storm", kind), other)  # type: ignore[arg-type]
            # Out of order: seq going backwards, exact duplicates of (boot_id, seq), an old revision reported.
            for seq in (10, 9, 10, 3, 10, 11, 11):
                await asyncio.to_thread(device.publish, TOPICS.telemetry("dev-storm"), load_report("dev-storm", seq))
            for revision in (7, 2, 7):
                old = ReportedState(device_id="dev-storm", revision=revision, updated_at=time.time(), converged=False)
                await asyncio.to_thread(device.publish, TOPICS.reported("dev-storm"), old.model_dump_json().encode())
            # After the storm, dispatch goes on: a fresh report is applied.
            await asyncio.to_thread(device.publish, TOPICS.telemetry("dev-storm"), load_report("dev-storm", 12))
            await until(lambda: hub.fleet.devices["dev-storm"].last_seq == 12, what="report 12 applied")
            await until(
                lambda: hub.metrics.dropped_count("malformed") >= sent_malformed,
                what=f"{sent_malformed} malformed counted (have {hub.metrics.dropped_count('malformed')})",
            )
        finally:
            await asyncio.to_thread(device.close)

        async with aiohttp.ClientSession() as session:
            ctx = ssl.create_default_context(cafile=str(api.cafile))
            async with session.get(f"{hub.url}/healthz", ssl=ctx) as resp:
                assert resp.status == 200
            async with session.get(f"{hub.url}/metrics", ssl=ctx) as resp:
                metrics = parse_metrics(await resp.text())
        drop = lambda reason: metrics[("edgefleet_hub_ingest_dropped_total", (("reason", reason),))]  # noqa: E731
        assert drop("malformed") == sent_malformed
        assert drop("device_mismatch") == 2
        assert drop("internal") == 0
        # 10, 11, 12 applied; 9, 10, 3, 10, 11 are duplicates (not newer than the last (boot_id, seq)).
        assert metrics[("edgefleet_hub_ingest_duplicates_total", ())] == 5
        assert metrics[("edgefleet_hub_ingest_messages_total", (("kind", "telemetry"),))] == 8
        assert metrics[("edgefleet_hub_ingest_messages_total", (("kind", "reported"),))] == 3
        # An old revision is the device's own truth about itself: applied as it comes (last one wins).
        assert hub.fleet.devices["dev-storm"].reported is not None
        assert hub.fleet.devices["dev-storm"].reported.revision == 7
        assert hub.metrics.broker_connected.labels(broker=f"mqtts://127.0.0.1:{hub_broker.port}")._value.get() == 1


async def _agent_metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        return parse_metrics(await resp.text())


def _desired_count(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], outcome: str) -> float:
    return metrics.get(("edgefleet_fleet_desired_messages_total", (("outcome", outcome),)), -1.0)


async def test_agent_survives_a_desired_state_storm_and_counts_it(
    hub_data_dir: Path, hub_broker: Mosquitto, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from agent_support import start_agent

    from protocols.messages import DesiredState

    rng = random.Random(SEED)
    config = hub_config(
        hub_data_dir, f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}", brokers=(f"mqtts://127.0.0.1:{hub_broker.port}",)
    )
    async with serve_hub(config) as hub:
        api = HubApi(hub.url, hub.identity.paths.ca_cert, hub.identity.paths.operator_token.read_text().strip())
        _, claim = await api.call("POST", "/api/v1/claims", {"uses": 1})
        identity = tmp_path / "agent" / "identity"
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "edge_agent",
                *claim["join_command"].split()[1:],
                "--identity-dir",
                str(identity),
                "--device-id",
                "dev-agent",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        agent_toml = tmp_path / "agent" / "agent.toml"
        agent_toml.write_text('state_dir = "state"\n[http]\nport = 0\n[fleet]\nidentity_dir = "identity"\n')
        agent = await asyncio.to_thread(start_agent, ["serve", "--config", str(agent_toml)])
        paths = hub.identity.paths
        # Other hub identities (the broker makes the CN the client id: the hub's own would take its link over).
        as_hub = {cn: (tmp_path / f"{cn}.pem", tmp_path / f"{cn}.key") for cn in ("edgefleet-hub-2", "edgefleet-hub-3")}
        for cn, files in as_hub.items():
            hub.identity.issue_keypair(cn, *files, server=False)
        hub_client = await asyncio.to_thread(
            DeviceClient, hub_broker, paths.ca_cert, as_hub["edgefleet-hub-2"], "storm-as-hub"
        )
        try:
            deadline = time.monotonic() + 20
            while (await _agent_metrics(agent.url)).get(("edgefleet_fleet_link_connected", ())) != 1:
                assert time.monotonic() < deadline, "agent link never came up"
                await asyncio.sleep(0.1)
            topic = TOPICS.desired("dev-agent")

            def desired(revision: int, device_id: str = "dev-agent") -> bytes:
                state = DesiredState(device_id=device_id, revision=revision, issued_at=time.time())
                return state.model_dump_json().encode()

            publish = hub_client.publish
            malformed = 0
            await asyncio.to_thread(publish, topic, b"\x00retained garbage", retain=True)
            malformed += 1
            for _ in range(50):
                await asyncio.to_thread(publish, topic, garbage(rng, desired(4)))
                malformed += 1
            await asyncio.to_thread(publish, topic, b'{"v": 1, "pad": "' + b"x" * (MAX_PACKET - 1024) + b'"}')
            malformed += 1
            for bad in ("../../etc", "dev-other"):
                payload = (
                    desired(9, device_id=bad)
                    if bad == "dev-other"
                    else desired(9).replace(b'"models":[]', b'"models":[{"name":"../../etc","version":"1"}]')
                )
                await asyncio.to_thread(publish, topic, payload)
                malformed += 1
            for revision in (5, 3, 5):  # a newer one, then an older one and a repeat: both ignored as stale
                await asyncio.to_thread(publish, topic, desired(revision))
            # A 10 MB payload: the broker (max_packet_size 1 MiB) refuses it and drops that publisher.
            flood = await asyncio.to_thread(
                DeviceClient, hub_broker, paths.ca_cert, as_hub["edgefleet-hub-3"], "storm-flood"
            )
            flood.client.publish(topic, b"x" * (10 << 20), qos=1)
            deadline = time.monotonic() + 10
            while flood.client.is_connected():
                assert time.monotonic() < deadline, "the broker took a 10 MB publish"
                await asyncio.sleep(0.05)
            await asyncio.to_thread(flood.client.loop_stop)
            await asyncio.to_thread(publish, topic, b"", retain=True)  # clears the retained garbage

            async def counts() -> tuple[float, float, float, float]:
                m = await _agent_metrics(agent.url)
                return tuple(_desired_count(m, o) for o in ("malformed", "received", "stale", "cleared"))  # type: ignore[return-value]

            deadline = time.monotonic() + 15
            while (got := await counts()) != (malformed, 3, 2, 1):
                assert time.monotonic() < deadline, f"(malformed, received, stale, cleared) = {got}"
                await asyncio.sleep(0.1)
            assert agent.proc.poll() is None
            async with aiohttp.ClientSession() as session, session.get(f"{agent.url}/v2/health/live") as resp:
                assert resp.status == 200
            metrics = await _agent_metrics(agent.url)
            assert metrics[("edgefleet_fleet_callback_errors_total", ())] == 0
            assert metrics[("edgefleet_fleet_link_connected", ())] == 1
            assert metrics[("edgefleet_fleet_link_connections_total", ())] == 1  # never dropped by the storm
        finally:
            await asyncio.to_thread(hub_client.close)
            code = await asyncio.to_thread(agent.stop)
        assert code == 0, "".join(agent.output)[-3000:]
        assert "Traceback" not in "".join(agent.output), "".join(agent.output)[-3000:]
