"""edge_agent.app in process: which services an agent runs for its config, and that serving never waits on them."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from agent_support import standalone_config
from aiohttp import web
from aiohttp.test_utils import TestClient
from rig import Mosquitto, TestPKI

from edge_agent.app import Agent
from edge_agent.config import AgentConfig
from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE

Client = TestClient[web.Request, web.Application]
DEVICE = "app-test-1"


def fleet_config(tmp_path: Path, identity_dir: Path) -> AgentConfig:
    """A device config (not standalone): the zoo imported into a store, a [fleet] section."""
    return AgentConfig.model_validate(
        {
            "state_dir": tmp_path / "state",
            "model_dirs": [PACKAGES_DIR],
            "trusted_keys": [ZOO_PUBLIC_KEY_FILE],
            "fleet": {"identity_dir": identity_dir, "telemetry_interval_s": 0.2},
        }
    )


def write_identity(directory: Path, pki: TestPKI, broker: Mosquitto) -> Path:
    """What `edge-agent provision` leaves behind, from the test CA (no model-signing key pinned)."""
    directory.mkdir(parents=True)
    certfile, keyfile = pki.client(DEVICE)
    shutil.copy(certfile, directory / "device.crt")
    shutil.copy(keyfile, directory / "device.key")
    shutil.copy(pki.cafile, directory / "ca.crt")
    info = {"device_id": DEVICE, "broker_url": f"mqtts://{broker.host}:{broker.port}", "telemetry_interval_s": 1.0}
    (directory / "provision.json").write_text(json.dumps(info))
    return directory


async def test_standalone_runs_serving_only(aiohttp_client: Any, tmp_path: Path) -> None:
    agent = Agent(standalone_config(fleet={"identity_dir": tmp_path / "never-read"}))
    client: Client = await aiohttp_client(agent.http)
    await agent.startup
    assert (await client.get("/v2/health/ready")).status == 200
    assert agent.fleet is None and agent.reconciler is None
    assert "edgefleet_fleet_link_connected" not in await (await client.get("/metrics")).text()


async def test_missing_identity_disables_the_fleet_link_and_serving_goes_on(
    aiohttp_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="edge_agent.app")
    agent = Agent(fleet_config(tmp_path, tmp_path / "no-identity"))
    client: Client = await aiohttp_client(agent.http)
    await agent.startup
    assert (await client.get("/v2/health/ready")).status == 200
    assert agent.fleet is None and agent.reconciler is None
    assert any("fleet link disabled" in r.getMessage() for r in caplog.records)


async def test_fleet_device_runs_link_telemetry_and_reconciler(
    aiohttp_client: Any, tmp_path: Path, mqtt_pki: TestPKI, mosquitto_mtls: Mosquitto
) -> None:
    identity = write_identity(tmp_path / "identity", mqtt_pki, mosquitto_mtls)
    agent = Agent(fleet_config(tmp_path, identity))
    client: Client = await aiohttp_client(agent.http)
    await agent.startup
    assert (await client.get("/v2/health/ready")).status == 200
    fleet = agent.fleet
    assert fleet is not None and agent.reconciler is not None
    for _ in range(500):
        if fleet.link.connected:
            break
        await asyncio.sleep(0.02)
    assert fleet.link.connected
    metrics = await (await client.get("/metrics")).text()
    assert "edgefleet_fleet_link_connected 1.0" in metrics
    assert 'edgefleet_fleet_desired_messages_total{outcome="stale"} 0.0' in metrics
    await client.close()  # runs the cleanup: fleet side first, then the serving core
    assert not fleet.link.connected and not agent.core.started
