"""Fixtures of the agent's tests; the helpers they use live in agent_support.py (importable by name)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from agent_support import AgentProcess, Reference, standalone_config, start_agent
from aiohttp import web
from aiohttp.test_utils import TestClient

from edge_agent.app import Agent
from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE


@pytest.fixture(scope="session")
def reference() -> Reference:
    """Direct onnxruntime sessions on the zoo models (the newest version of each)."""
    return Reference()


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    """`edge-agent serve --standalone` on the zoo, on a free port, for the whole module."""
    process = start_agent(
        ["serve", "--standalone", "--model-dir", str(PACKAGES_DIR), "--trust", str(ZOO_PUBLIC_KEY_FILE), "--port", "0"]
    )
    yield process
    code = process.stop()
    assert code == 0, "".join(process.output)


@pytest_asyncio.fixture
async def client(aiohttp_client: Any) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """An in-process agent app on the zoo, models loaded and warmed up."""
    agent = Agent(standalone_config())
    app = agent.http
    test_client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    await agent.startup
    yield test_client
