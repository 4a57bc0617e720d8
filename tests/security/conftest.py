"""Fixtures of the security checks: a real hub over HTTPS (SQLite), its broker, helpers from the other suites."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

# The hub's and the agent's test helpers (hub_devices, hub_support, agent_support) are importable by name.
_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("cloud_hub", "edge_agent", "security"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.append(str(_TESTS / _folder))

from rig import Mosquitto  # noqa: E402
from sec_support import HubApi, start_hub_broker  # noqa: E402

from cloud_hub.api import serve_hub  # noqa: E402
from cloud_hub.hub import Hub  # noqa: E402
from cloud_hub.pki import HubIdentity  # noqa: E402


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
    from hub_support import hub_config

    async with serve_hub(hub_config(hub_data_dir, f"sqlite+aiosqlite:///{hub_data_dir.parent / 'hub.db'}"),
                         ingest=False) as running:  # fmt: skip
        yield running


@pytest.fixture
def api(hub: Hub) -> HubApi:
    """Operator calls against the hub."""
    return HubApi(hub.url, hub.identity.paths.ca_cert, hub.identity.paths.operator_token.read_text().strip())
