"""Fixtures of the fault-injection suite; its helpers live in fault_support.py (importable by name).

The suite reuses the end-to-end rig (tests/e2e/rollout_support.py) and the agent helpers
(tests/edge_agent/agent_support.py), so both folders are put on the import path here.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("e2e", "edge_agent"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))

from fault_support import FaultRig  # noqa: E402  # needs the path above
from replicas_support import ReplicaRig  # noqa: E402

from deploy.local.procs import Supervisor  # noqa: E402


@pytest_asyncio.fixture
async def frig(tmp_path: Path) -> AsyncIterator[FaultRig]:
    """Broker (production mTLS + ACL) + hub with tiny-cnn 1 and 2 pushed; agents are added by the test.

    At teardown every child is stopped and the test fails if any process of it is still alive."""
    rig = FaultRig(tmp_path)
    try:
        await rig.start()
        yield rig
    finally:
        rig.stop()
    rig.assert_no_leftovers()


@pytest_asyncio.fixture
async def frig_pg(tmp_path: Path) -> AsyncIterator[ReplicaRig]:
    """The fault rig with two hub replicas on a fresh PostgreSQL database (dropped afterwards)."""
    rig = ReplicaRig(tmp_path, replicas=2)
    try:
        await rig.start()
        yield rig
    finally:
        rig.stop()
        await rig.drop_database()
    rig.assert_no_leftovers()


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[Supervisor]:
    """A Supervisor for tests that need no broker or hub; fails the test if a child survives it."""
    supervisor = Supervisor(tmp_path, grace_s=5.0)
    try:
        yield supervisor
    finally:
        supervisor.stop_all()
    assert not [c.name for c in supervisor.children if c.alive], "processes left behind"
