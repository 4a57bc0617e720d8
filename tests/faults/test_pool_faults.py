"""Cloud pool faults: the pool answers 500, hangs (accepts, never answers), or vanishes (kill -9), then heals.

An agent (no fleet link) serves a safety pipeline locally and a best-effort pipeline that may only run on the
pool (best-effort local queue 0: every best-effort request overflows). Must hold, in every phase: no answer
differs from onnxruntime's, best-effort requests are answered (200 from the pool, or 503) within their
deadline, safety requests all succeed within theirs, and the breaker lets traffic through again once the pool
is healthy.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from fault_support import SAFETY, SAFETY_DEADLINE_MS, Pipe, References, Traffic, failures, p99

from deploy.local import stack
from deploy.local.procs import HOST, Child, Supervisor, free_port
from deploy.local.stack import agent_toml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

BEST_EFFORT = Pipe("shelf", "best_effort", 400, offload="overflow")
SLACK_S = 0.15  # HTTP and scheduling overhead on a loaded 2-core machine, on top of the deadline
PHASE_S = 3.0


async def _start_pool(sup: Supervisor, port: int) -> Child:
    script = Path(__file__).with_name("pool_support.py")
    child = sup.spawn(f"pool-{time.monotonic_ns()}", [sys.executable, str(script), str(port)],
                      env={"PYTHONPATH": str(stack.REPO)})  # fmt: skip
    await child.wait_for(r"fault-pool ready", 30)
    return child


async def _mode(port: int, mode: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(f"http://{HOST}:{port}/control/{mode}") as resp:
        assert resp.status == 200


async def _breaker(url: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    found = re.search(r'^edgefleet_pool_breaker_state\{pool="cloud"\} (\S+)', text, re.MULTILINE)
    return float(found.group(1)) if found else -1.0


async def test_pool_errors_hangs_and_vanishes_without_wrong_answers(sup: Supervisor, tmp_path: Path) -> None:
    port = free_port()
    pool = await _start_pool(sup, port)
    agent_dir = tmp_path / "agent"
    agent_toml(
        agent_dir,
        (SAFETY, BEST_EFFORT),
        pool_url=f"http://{HOST}:{port}",
        fleet_link=False,
        extra=[
            "", "[scheduler.queue_limits]", "best_effort = 0",
            "", "[offload]", "probe_interval_s = 0.1", "connect_timeout_s = 0.3",
            "", "[offload.breaker]", "consecutive_failures = 3", "open_s = 0.5",
        ],
    )  # fmt: skip
    _, url = await stack.start_agent(sup, "agent", agent_dir / "agent.toml")
    refs = References()
    phases: dict[str, tuple[float, float]] = {}
    breaker: dict[str, float] = {}
    async with Traffic(lambda: url, refs) as traffic:
        traffic.paced(SAFETY.name, 20)
        traffic.closed_loop(BEST_EFFORT.name, workers=2)

        async def phase(name: str) -> None:
            start = time.monotonic()
            await asyncio.sleep(PHASE_S)
            phases[name] = (start, time.monotonic())
            breaker[name] = await _breaker(url)

        await phase("healthy")
        await _mode(port, "error")
        await phase("error")
        await _mode(port, "ok")
        await phase("healed-1")
        await _mode(port, "hang")
        await phase("hang")
        await _mode(port, "ok")
        await phase("healed-2")
        pool.proc.send_signal(signal.SIGKILL)
        pool.proc.wait(5)
        await phase("vanished")
        pool = await _start_pool(sup, port)
        await phase("healed-3")
    be = traffic.of(BEST_EFFORT.name)
    safety = traffic.of(SAFETY.name)

    def during(name: str, tail_s: float | None = None) -> list[str]:
        start, end = phases[name]
        if tail_s is not None:
            start = end - tail_s
        return [f"{o.status}/{o.route}" for o in be if start <= o.at - o.latency_s and o.at <= end]

    # Never a wrong answer: every 200 (local or cloud) equals onnxruntime's output for its version.
    assert all(o.correct for o in traffic.outcomes if o.status == 200)
    # Best-effort: 200 from the pool or 503, never another status, never later than its deadline.
    assert {o.status for o in be} <= {200, 503}, {o.status for o in be}
    late = [round(o.latency_s, 3) for o in be if o.latency_s > BEST_EFFORT.deadline_ms / 1000 + SLACK_S]
    assert not late, f"best-effort answers past the deadline: {late[:10]}"
    # Safety: untouched by any pool fault.
    assert failures(safety) == [], failures(safety)[:5]
    assert {o.route for o in safety} == {"local"}
    assert p99(safety) < SAFETY_DEADLINE_MS / 1000, f"safety p99 {p99(safety) * 1000:.0f} ms"
    # Faults: no pool answers; the breaker opens (2) during errors and a vanished pool.
    for name in ("error", "hang", "vanished"):
        assert "200/cloud" not in during(name, tail_s=PHASE_S - 0.5), (name, during(name))
    assert breaker["error"] == 2.0 and breaker["vanished"] == 2.0, breaker
    # Healed: the breaker closes again and the pool answers.
    for name in ("healthy", "healed-1", "healed-2", "healed-3"):
        assert "200/cloud" in during(name, tail_s=1.0), (name, during(name))
        assert breaker[name] == 0.0, breaker
    fast_503 = [o.latency_s for o in be if o.status == 503 and o.at - o.latency_s > phases["error"][0] + 0.5
                and o.at < phases["error"][1]]  # fmt: skip
    print(
        f"pool faults: requests={len(traffic.outcomes)} best_effort={len(be)} "
        f"best_effort_503={sum(o.status == 503 for o in be)} safety_p99_ms={p99(safety) * 1000:.0f} "
        f"error_phase_503_max_ms={max(fast_503, default=0) * 1000:.0f} breaker={breaker}"
    )
    assert fast_503 and max(fast_503) < 0.1, "with the breaker open, best-effort is refused at once"
