"""End-to-end telemetry acks (issue 14) against a real mosquitto and a real store (SQLite and PostgreSQL):
the hub acknowledges what it committed, resent reports included; it re-subscribes after a broker restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
from devices_support import TOPICS, DeviceClient, birth, load_report
from hub_support import hub_config
from rig import Mosquitto
from test_hub_api import Api
from test_hub_ingest import _device, until

from cloud_hub.app import Hub, serve_hub
from cloud_hub.ingest.acks import seq_ranges
from cloud_hub.pki import HubIdentity
from cloud_hub.store import telemetry
from protocols.messages import TelemetryAck


def test_seq_ranges_merge_runs_and_ignore_repeats() -> None:
    assert seq_ranges([5, 1, 2, 3, 3, 9, 8, 12]) == [(1, 3), (5, 5), (8, 9), (12, 12)]
    assert seq_ranges([]) == []


@pytest.fixture
def persistent_broker(tmp_path: Path, mosquitto_bin: str, hub_identity: HubIdentity) -> Any:
    """The production mTLS broker with persistence on (as deploy/mosquitto/mosquitto.conf)."""
    pki = tmp_path / "broker-pki"
    pki.mkdir()
    cert, key = pki / "broker.pem", pki / "broker.key"
    hub_identity.issue_keypair("edgefleet-broker", cert, key, server=True, hosts=("localhost", "127.0.0.1"))
    hub_identity.ca.write_crl(hub_identity.paths.crl, [])
    files = SimpleNamespace(cafile=hub_identity.paths.ca_cert, server_certfile=cert, server_keyfile=key)
    broker = Mosquitto(
        "mtls",
        tmp_path / "mosquitto-persist",
        pki=files,  # type: ignore[arg-type]  # duck-typed: cafile/server_certfile/server_keyfile
        crlfile=hub_identity.paths.crl,
        persistence=True,
        binary=mosquitto_bin,
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest_asyncio.fixture
async def acking_hub(hub_data_dir: Path, db_url: str, persistent_broker: Mosquitto) -> AsyncIterator[Hub]:
    config = hub_config(
        hub_data_dir, db_url, brokers=(f"mqtts://127.0.0.1:{persistent_broker.port}",), batch_max_delay_ms=50
    )
    async with serve_hub(config) as hub:
        assert hub.ingest is not None
        hub.ingest.acks.interval_s = 0.1
        await hub.ingest.wait_connected(10)
        yield hub


def _acked(device: DeviceClient, device_id: str) -> list[TelemetryAck]:
    topic = TOPICS.telemetry_ack(device_id)
    return [TelemetryAck.model_validate_json(m.payload) for m in list(device.received) if m.topic == topic]


def _acked_seqs(acks: list[TelemetryAck], boot_id: str = "boot-1") -> list[int]:
    return [s for a in acks if a.boot_id == boot_id for first, last in a.ranges for s in range(first, last + 1)]


async def _stored(hub: Hub, device_id: str) -> list[int]:
    assert hub.ingest is not None
    await hub.ingest.writer.drain()
    async with hub.store.begin() as conn:
        return sorted(r["seq"] for r in await telemetry.recent(conn, device_id))


async def test_committed_reports_are_acked_resends_again_and_older_ones_stored(
    acking_hub: Hub, persistent_broker: Mosquitto, tmp_path: Path
) -> None:
    hub = acking_hub
    api = Api(hub)
    token = (await api.claim())["token"]
    dev = await _device(api, token, "dev-k", persistent_broker, tmp_path)
    try:
        dev.client.subscribe(TOPICS.telemetry_ack("dev-k"), qos=1)
        await asyncio.to_thread(dev.publish, TOPICS.state("dev-k"), birth("dev-k"), retain=True)
        await until(lambda: (live := hub.fleet.get("dev-k")) is not None and live.online is True, what="birth")
        for seq in (1, 2, 3, 5):
            await asyncio.to_thread(dev.publish, TOPICS.telemetry("dev-k"), load_report("dev-k", seq))
        await until(lambda: set(_acked_seqs(_acked(dev, "dev-k"))) == {1, 2, 3, 5}, what="acks of 1-3, 5")
        first = _acked(dev, "dev-k")
        assert all(a.device_id == "dev-k" and a.boot_id == "boot-1" for a in first)
        # The agent resends what it holds unacknowledged: 2 (stored: its ack was lost) and 4 (older than 5, never
        # stored). Both are acknowledged; 4 is stored although this replica had already seen seq 5.
        for seq in (2, 4):
            await asyncio.to_thread(dev.publish, TOPICS.telemetry("dev-k"), load_report("dev-k", seq))
        await until(lambda: sorted(_acked_seqs(_acked(dev, "dev-k"))) == [1, 2, 2, 3, 4, 5], what="acks of 2, 4")
        assert await _stored(hub, "dev-k") == [1, 2, 3, 4, 5]  # each once
        assert hub.metrics.duplicates._value.get() == 2
        assert hub.metrics.acks_sent._value.get() == len(_acked(dev, "dev-k"))
        # Malformed and foreign reports are never acknowledged.
        await asyncio.to_thread(dev.publish, TOPICS.telemetry("dev-k"), b"{not json")
        await asyncio.to_thread(dev.publish, TOPICS.telemetry("dev-k"), load_report("dev-x", 9))
        await asyncio.to_thread(dev.publish, TOPICS.telemetry("dev-k"), load_report("dev-k", 6))
        await until(lambda: 6 in _acked_seqs(_acked(dev, "dev-k")), what="ack of 6")
        assert 9 not in _acked_seqs(_acked(dev, "dev-k"))
    finally:
        dev.close()


async def test_no_ack_when_the_write_fails(acking_hub: Hub, persistent_broker: Mosquitto, tmp_path: Path) -> None:
    hub = acking_hub
    assert hub.ingest is not None
    api = Api(hub)
    token = (await api.claim())["token"]
    dev = await _device(api, token, "dev-f", persistent_broker, tmp_path)
    writer = hub.ingest.writer
    real_begin = hub.store.begin
    try:
        dev.client.subscribe(TOPICS.telemetry_ack("dev-f"), qos=1)
        await asyncio.to_thread(dev.publish, TOPICS.state("dev-f"), birth("dev-f"), retain=True)
        await until(lambda: (live := hub.fleet.get("dev-f")) is not None and live.online is True, what="birth")
        await writer.drain()

        def failing_begin() -> Any:
            raise OSError("database away")  # the database is a boundary this test does not cover

        hub.store.begin = failing_begin  # type: ignore[method-assign]
        await asyncio.to_thread(dev.publish, TOPICS.telemetry("dev-f"), load_report("dev-f", 1))
        await until(lambda: hub.metrics.dropped_count("db_error") >= 1, what="the failed write")
        hub.store.begin = real_begin  # type: ignore[method-assign]
        await asyncio.sleep(0.5)
        assert _acked(dev, "dev-f") == []
        # The agent's resend goes through now, is stored and acknowledged.
        await asyncio.to_thread(dev.publish, TOPICS.telemetry("dev-f"), load_report("dev-f", 1))
        await until(lambda: _acked_seqs(_acked(dev, "dev-f")) == [1], what="ack after the resend")
        assert await _stored(hub, "dev-f") == [1]
    finally:
        hub.store.begin = real_begin  # type: ignore[method-assign]
        dev.close()


async def test_hub_resubscribes_after_a_broker_restart_with_its_session_present(
    acking_hub: Hub, persistent_broker: Mosquitto, tmp_path: Path
) -> None:
    """mosquitto does not keep `$share` subscriptions across its restart, even in a persisted session: the
    hub subscribes again after every CONNACK, session present or not (cloud_hub/broker/link.py)."""
    hub = acking_hub
    assert hub.ingest is not None
    link = hub.ingest.links[0]
    connects = link._epoch  # connection attempts so far (private, read only here)
    await asyncio.to_thread(persistent_broker.restart)
    await until(lambda: link._epoch > connects and link.connected.is_set(), timeout_s=30, what="reconnected")
    assert link.session_present is True  # the broker restored the persisted session...
    api = Api(hub)
    token = (await api.claim())["token"]
    dev = await _device(api, token, "dev-r2", persistent_broker, tmp_path)
    try:
        await asyncio.to_thread(dev.publish, TOPICS.state("dev-r2"), birth("dev-r2"), retain=True)
        for seq in range(1, 4):
            await asyncio.to_thread(dev.publish, TOPICS.telemetry("dev-r2"), load_report("dev-r2", seq))
        # ...but not its shared telemetry subscription: only the re-subscription delivers these.
        await until(
            lambda: (d := hub.fleet.get("dev-r2")) is not None and d.last_seq == 3, what="reports after restart"
        )
        assert await _stored(hub, "dev-r2") == [1, 2, 3]
    finally:
        dev.close()
