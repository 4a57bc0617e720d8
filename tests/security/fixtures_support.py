"""Fixtures of the security checks and the MQTT storms (imported by tests/security and tests/fuzz conftests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from hub_support import hub_config
from rig import Mosquitto
from sec_support import HubApi, start_hub_broker

from cloud_hub.app import Hub, serve_hub
from cloud_hub.pki import HubIdentity


@pytest.fixture
def hub_data_dir(tmp_path: Path) -> Path:
    """The hub's data dir."""
    return tmp_path / "hub-data"


@pytest.fixture
def hub_identity(hub_data_dir: Path) -> HubIdentity:
    """The hub's identity, created before the hub starts so a broker can use its CA."""
    return HubIdentity.bootstrap(hub_data_dir, ("localhost", "127.0.0.1"))


@pytest.fixture
def hub_broker(tmp_path: Path, mosquitto_bin: str, hub_identity: HubIdentity) -> Iterator[Mosquitto]:
    """The production mTLS broker config trusting the hub CA, with the hub's CRL."""
    broker = start_hub_broker(tmp_path, mosquitto_bin, hub_identity)
    try:
        yield broker
    finally:
        broker.stop()


@pytest_asyncio.fixture
async def hub(hub_data_dir: Path) -> AsyncIterator[Hub]:
    """A hub serving HTTPS on a free port (SQLite), no broker."""
    async with serve_hub(
        hub_config(hub_data_dir, f"sqlite+aiosqlite:///{hub_data_dir.parent / 'hub.db'}"), ingest=False
    ) as running:
        yield running


@pytest.fixture
def api(hub: Hub) -> HubApi:
    """Operator calls against the hub."""
    return HubApi(hub.url, hub.identity.paths.ca_cert, hub.identity.paths.operator_token.read_text().strip())
