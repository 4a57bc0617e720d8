"""Issue 17, pool demand end to end: real mosquitto (production mTLS + ACL), `cloud-hub serve`, a real pool
(`edge-agent serve --standalone`) and two provisioned `edge-agent serve` devices whose best-effort traffic
all overflows to it. Under a known paced load the hub's exported pool demand must equal what the devices
really offered the pool, within 5 % (tests/e2e/demand_support.py; two hub replicas: tests/faults)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from demand_support import measure
from rollout_support import Rig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    try:
        await r.start()
        yield r
    finally:
        r.stop()


async def test_exported_pool_demand_equals_the_offered_overflow_within_5_percent(rig: Rig) -> None:
    got = await measure(rig, [rig.hub_url], lag_intervals=1)
    print(got.line("pool demand e2e, one hub"))
    assert abs(got.exported_rps - got.offered_rps) <= 0.05 * got.offered_rps
    assert abs(got.exported_rows - got.offered_rows) <= 0.05 * got.offered_rows
