"""kill -9 of the agent at seeded random points of a rollout's download, install and activation.

Each seed picks the next target version (2 -> 4 -> 1 -> 2 ...; 4 is tiny-cnn re-signed with 3 MB of padding so
its download takes a while, 1 is a rollback to a version already on disk) and one of two ways to crash:
- `pause`: the agent is started with EDGEFLEET_TEST_PAUSE_AT=<random point> and killed once it stops there
  (or once it converged, when that point is not on this rollout's path, e.g. `download` of a kept version);
- `delay`: the agent is killed a random 0-1.2 s after the rollout was created.
After each restart it must serve at once a complete version (old or new, never anything else) whose outputs
equal onnxruntime's for that version, and converge to the target (the hub's rollout completes).
Seeds are fixed, so a failure names the seed that reproduces it.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path

import pytest
from fault_support import STANDARD, FaultRig, Traffic, soak_only, until
from rollout_support import publisher_package

from edge_agent.reconcile.faults import POINTS

pytestmark = [pytest.mark.slow]
CYCLE = ("2", "4", "1")


async def _crash_seeds(frig: FaultRig, tmp_path: Path, seeds: range) -> None:
    package = publisher_package(tmp_path, "4", padding_bytes=3_000_000)
    await frig.cli("models", "trust-key", str(tmp_path / "publisher-4.pub"))
    await frig.cli("models", "push", str(package))
    frig.refs.alias("4", "2")
    agent = await frig.add_fault_agent("dev-k", (STANDARD,))
    current = "1"
    log: list[str] = []
    async with Traffic(lambda: agent.url, frig.refs) as traffic:
        traffic.closed_loop(STANDARD.name)  # answers all along, checked against onnxruntime
        for seed, target in zip(seeds, itertools.cycle(CYCLE), strict=False):
            rng = random.Random(seed)
            mode = rng.choice(("pause", "delay"))
            point = rng.choice(POINTS) if mode == "pause" else None
            delay = rng.uniform(0.0, 1.2)
            if point is not None:
                frig.kill9(agent)
                await frig.launch(agent, pause_at=point)
            rollout_id = await frig.rollout(target, "--canary", "1", "--waves", "100%", "--bake", "0s")
            assert agent.child is not None
            if point is not None:
                paused = f"EDGEFLEET_TEST_PAUSED {point}"

                async def stopped(paused: str = paused, target: str = target) -> bool:
                    assert agent.child is not None
                    return paused in agent.child.output() or await frig.converged_on("dev-k", target)

                await until(stopped, 30, f"seed {seed}: pause at {point} or convergence")
                where = point if paused in agent.child.output() else f"{point} (not reached)"
            else:
                await asyncio.sleep(delay)
                where = f"{delay:.2f} s"
            frig.kill9(agent)
            await frig.launch(agent)
            first = await traffic.one(STANDARD.name)  # straight after the restart
            assert first.status == 200 and first.correct, (seed, where, first)
            assert first.version in (current, target), (seed, where, first.version, current, target)
            await until(lambda t=target: frig.converged_on("dev-k", t), 45, f"seed {seed} converging on {target}")
            detail = await frig.wait_rollout(rollout_id, ("completed",), timeout_s=30)
            assert {d["status"] for d in detail["devices"]} == {"active"}
            after = await traffic.one(STANDARD.name)
            assert after.status == 200 and after.correct and after.version == target, (seed, where, after)
            log.append(f"seed={seed} {current}->{target} killed at {where}: served {first.version} on restart")
            current = target
    ok = [o for o in traffic.outcomes if o.status == 200]
    wrong = [o for o in ok if not o.correct]
    print("\n".join(log))
    print(f"agent crashes: seeds={len(seeds)} requests={len(traffic.outcomes)} answered={len(ok)} wrong={len(wrong)}")
    assert not wrong, wrong[:5]
    assert {o.version for o in ok} <= set(CYCLE)


@pytest.mark.timeout(240)
async def test_kill9_agent_at_random_points_6_seeds(frig: FaultRig, tmp_path: Path) -> None:
    await _crash_seeds(frig, tmp_path, range(6))


@pytest.mark.timeout(900)
@soak_only[0]
@soak_only[1]
async def test_kill9_agent_at_random_points_24_seeds(frig: FaultRig, tmp_path: Path) -> None:
    await _crash_seeds(frig, tmp_path, range(100, 124))
