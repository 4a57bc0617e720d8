"""Pool demand with two hub replicas on PostgreSQL sharing the broker's `$share` telemetry subscription: each
replica sees every other report of a device and exports its share; the sum over replicas (what the KEDA
query reads) must equal what the devices really offered the pool, not twice it (+82 % without the share):
within 20 % here, where each
replica has only ~8 reports per device to estimate its share from (the estimate, (n-1)/seq span, is exact for one
replica and for a strict alternation; an irregular split biases it up by about 1/n while the history is short,
and measured +4.5 % requests / +5.5 % rows in one run; on 2026-12-03, after the broker's dynsec default, +12.7 %
and +12.9 % requests / +14.1 % rows in two runs: an overshoot whose cause is not found yet, open in the notes).
One hub: within 5 %
(tests/e2e/test_pool_demand_e2e.py)."""

from __future__ import annotations

import pytest
from demand_support import PER_REPLICA, measure
from replicas_support import ReplicaRig

from deploy.local import stack

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(240)]


async def test_pool_demand_summed_over_two_replicas_equals_the_offered_overflow(frig_pg: ReplicaRig) -> None:
    urls = [(await hub.wait_for(stack.READY_HUB, 5)).group(1) for hub in frig_pg.hubs]
    assert len(urls) == 2
    # Three devices reporting in turn: the broker's round-robin over the two replicas alternates every device
    # between them (with two devices each replica would get one device's every report).
    load = {"dev-a": (12.0, 2), "dev-b": (8.0, 3), "dev-c": (5.0, 1)}
    got = await measure(frig_pg, urls, lag_intervals=3, load=load)
    print(got.line("pool demand e2e, two hub replicas"), "; per replica req/s:", PER_REPLICA)
    assert abs(got.exported_rps - got.offered_rps) <= 0.20 * got.offered_rps
    assert abs(got.exported_rows - got.offered_rows) <= 0.20 * got.offered_rows
