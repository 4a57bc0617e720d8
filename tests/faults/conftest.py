"""Fixtures of the fault-injection suite; its helpers live in fault_support.py (importable by name).

The suite reuses the end-to-end rig (tests/e2e/rollout_support.py) and the agent helpers
(tests/edge_agent/agent_support.py), so both folders are put on the import path here.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("e2e", "edge_agent"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))

from fault_support import FaultRig  # noqa: E402  # needs the path above


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
