"""The hub killed with SIGKILL during a rollout and during telemetry ingest, then started again (same data dir,
same port: desired states name artifact URLs on it).

Must hold: the devices serve throughout (zero failed or wrong requests), the rollout carries on to completion
after each restart, ingest resumes, and no report is lost: not those made while the hub was down (the broker
queues them for the hub's persistent session) nor those it had received but not yet written (it acknowledges
a message only once its batch is committed, so the broker sends those again).
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from fault_support import SAFETY, SAFETY_DEADLINE_MS, STANDARD, FaultRig, Traffic, contiguous_per_boot, failures, p99
from fault_support import until as wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def test_hub_killed_during_rollout_and_ingest(frig: FaultRig) -> None:
    rng = random.Random(8)
    agents = [await frig.add_fault_agent(f"dev-{i}", (SAFETY, STANDARD)) for i in range(2)]
    # Safety traffic goes to each agent's safety cell, as a safety app would (docs/pipelines.md).
    t0_cell, t1_cell = (lambda: frig.cell_urls[agents[0].device_id]), (lambda: frig.cell_urls[agents[1].device_id])
    async with (
        Traffic(lambda: agents[0].url, frig.refs, safety_url=t0_cell) as t0,
        Traffic(lambda: agents[1].url, frig.refs, safety_url=t1_cell) as t1,
    ):
        for traffic in (t0, t1):
            traffic.paced(SAFETY.name, 10)
            traffic.closed_loop(STANDARD.name)
        await asyncio.sleep(3)  # telemetry flowing into the hub
        rollout_id = await frig.rollout("2", "--canary", "1", "--waves", "100%", "--bake", "3s")
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        await frig.restart_hub()  # 1: while the canary's desired state goes out / it installs
        kills = [time.time()]

        async def canary_active() -> bool:
            detail = await frig.rollout_detail(rollout_id)
            return any(d["wave"] == 0 and d["status"] == "active" for d in detail["devices"])

        await wait_until(canary_active, 45, "canary active after the first hub restart")
        await asyncio.sleep(rng.uniform(0.0, 2.0))
        await frig.restart_hub()  # 2: during the canary's bake, wave 1 still to come
        kills.append(time.time())
        detail = await frig.wait_rollout(rollout_id, ("completed",), timeout_s=60)
        await asyncio.sleep(2)
    assert {d["status"] for d in detail["devices"]} == {"active"}
    for traffic in (t0, t1):
        assert failures(traffic.outcomes) == [], failures(traffic.outcomes)[:5]
        assert {o.version for o in traffic.outcomes} == {"1", "2"}  # switched under load, never broke
        assert p99(traffic.of(SAFETY.name)) < SAFETY_DEADLINE_MS / 1000
    for agent in agents:
        assert await frig.serving(agent) == "2"
    # Ingest resumed after the last restart, and no report is missing, from before, during or after the kills.
    resumed_at = kills[-1] + 3.0
    await wait_until(lambda: all(any(t > resumed_at for _, _, t in frig.telemetry(a.device_id)) for a in agents), 30,
                     "reports after the restart")  # fmt: skip
    lost: dict[str, list[int]] = {}
    for agent in agents:
        rows = frig.telemetry(agent.device_id)
        after = [r for r in rows if r[2] > resumed_at]
        assert after and not any(contiguous_per_boot(after).values())
        lost[agent.device_id] = [s for missing in contiguous_per_boot(rows).values() for s in missing]
    print(f"hub kills=2 requests={len(t0.outcomes) + len(t1.outcomes)} reports lost: {lost}")
    assert lost == {a.device_id: [] for a in agents}, f"reports lost: {lost}"
