"""Broker restart loops: mosquitto stopped (SIGTERM) or crashed (SIGKILL) again and again while an agent serves
a safety and a standard pipeline and reports telemetry through it to a real hub.

Must hold: zero failed local requests, every answer equal to onnxruntime's, safety p99 within its deadline,
the link back up after every restart, and every telemetry report stored exactly once (asserted per seq), with
two hub replicas on PostgreSQL. mosquitto loses `$share` telemetry published before the hubs re-subscribe;
the agent keeps each report until a hub acknowledges it end to end and resends it (docs/telemetry.md).
The broker-down test keeps the broker away for 20 s (5 minutes in `make soak`) with agents serving: every
report arrives afterwards, in order.

The broker runs with persistence on, as in production (deploy/mosquitto/mosquitto.conf): the hub's persistent
session, its subscriptions and what is queued for it survive a restart only then.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import aiohttp
import pytest
from fault_support import (
    SAFETY,
    SAFETY_DEADLINE_MS,
    STANDARD,
    FaultRig,
    Traffic,
    contiguous_per_boot,
    failures,
    p99,
    soak_only,
    until,
)
from replicas_support import ReplicaRig

pytestmark = [pytest.mark.slow]


async def _persistent_broker(frig: FaultRig) -> None:
    """Turn the rig's broker (the production config with persistence off) into production's: persistence on."""
    conf = frig.workdir / "mosquitto.conf"
    lines = [line for line in conf.read_text().splitlines() if not line.startswith("persistence")]
    lines += ["persistence true", f"persistence_location {frig.workdir}/"]
    conf.write_text("\n".join(lines) + "\n")
    await frig.restart_broker(signal.SIGTERM)
    await asyncio.sleep(3)  # the hub reconnects (jittered backoff) and creates its session on this broker


async def _complete(frig: FaultRig, device_id: str, made_until: float) -> list[tuple[str, int, float, float]] | None:
    """The device's stored reports once they hold one made after `made_until` and no gap; else None."""
    rows = await frig.stored(device_id)
    if not any(sent > made_until for _, _, sent, _ in rows):
        return None
    gaps = contiguous_per_boot([(b, s, t) for b, s, t, _ in rows])
    return None if any(gaps.values()) else rows


async def _agent_counter(agent_url: str, outcome: str) -> float:
    """One outcome of the agent's edgefleet_fleet_telemetry_reports_total (its /metrics)."""
    async with aiohttp.ClientSession() as session, session.get(f"{agent_url}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(f'edgefleet_fleet_telemetry_reports_total{{outcome="{outcome}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _check_stored(rows: list[tuple[str, int, float, float]]) -> None:
    """One boot, seqs from 0 without a gap, each stored once (asserted per seq, not by count)."""
    keys = [(b, s) for b, s, _, _ in rows]
    assert len(keys) == len(set(keys)), "a report is stored twice"
    assert len({b for b, _ in keys}) == 1, f"one agent boot expected: {sorted({b for b, _ in keys})}"
    assert [s for _, s in keys] == list(range(len(keys))), "a report is missing"


async def _restart_loop(frig: ReplicaRig, restarts: int, up_s: float) -> None:
    await _persistent_broker(frig)
    agent = await frig.add_fault_agent("dev-b", (SAFETY, STANDARD))
    async with Traffic(lambda: agent.url, frig.refs) as traffic:
        traffic.paced(SAFETY.name, 20)
        traffic.closed_loop(STANDARD.name)
        await asyncio.sleep(2)
        for i in range(restarts):
            ups = frig.link_ups(agent)
            # Alternate a clean stop and a crash; the broker stays away for 0.5 s to 2 s.
            sig = signal.SIGKILL if i % 2 else signal.SIGTERM
            await frig.restart_broker(sig, down_s=0.5 + 1.5 * (i % 3) / 2)
            await until(lambda n=ups: frig.link_ups(agent) > n, 30, f"link up after restart {i + 1}")
            await asyncio.sleep(up_s)
        await asyncio.sleep(2)
        await traffic.finish()
    # Every report the agent made must reach the store: what a restart lost (published before the hubs
    # re-subscribed) is resent until a replica acknowledges it. Wait for a report made after the run, no gap.
    made_until = time.time()
    await until(lambda: _complete(frig, "dev-b", made_until), 60, "every report stored")
    rows = await frig.stored("dev-b")
    safety = traffic.of(SAFETY.name)
    assert failures(traffic.outcomes) == [], failures(traffic.outcomes)[:5]
    assert len(safety) > 10 * restarts
    assert p99(safety) < SAFETY_DEADLINE_MS / 1000, f"safety p99 {p99(safety) * 1000:.0f} ms"
    assert frig.link_ups(agent) == restarts + 1
    _check_stored(rows)
    resent = await _agent_counter(agent.url, "resent")
    print(f"broker restarts={restarts} hub_replicas={frig.replicas} (PostgreSQL) requests={len(traffic.outcomes)} "
          f"safety_p99_ms={p99(safety) * 1000:.0f} reports_stored={len(rows)} lost=0 duplicated=0 "
          f"resent={resent:.0f}")  # fmt: skip


@pytest.mark.postgres
@pytest.mark.timeout(180)
async def test_broker_restarted_3_times_nothing_lost(frig_pg: ReplicaRig) -> None:
    await _restart_loop(frig_pg, restarts=3, up_s=2.0)


@pytest.mark.postgres
@pytest.mark.timeout(900)
@pytest.mark.parametrize("restarts", [30], ids=["30x"])
@soak_only[0]
@soak_only[1]
async def test_broker_restart_loop_soak(frig_pg: ReplicaRig, restarts: int) -> None:
    await _restart_loop(frig_pg, restarts=restarts, up_s=3.0)


async def _broker_down(frig: FaultRig, down_s: float, agents: int = 2) -> None:
    """The broker away for `down_s` while `agents` agents serve safety traffic and keep reporting (1 s)."""
    await _persistent_broker(frig)
    fleet = [await frig.add_fault_agent(f"dev-o{i}", (SAFETY,)) for i in range(agents)]
    async with contextlib.AsyncExitStack() as stack:
        traffics = [await stack.enter_async_context(Traffic(lambda a=a: a.url, frig.refs)) for a in fleet]
        for traffic in traffics:
            traffic.paced(SAFETY.name, 10)
        await asyncio.sleep(3)
        ups = [frig.link_ups(a) for a in fleet]
        await frig.stop_broker(signal.SIGTERM)
        await asyncio.sleep(down_s)
        served_down = sum(len(t.outcomes) for t in traffics)
        await frig.start_broker_again()
        await until(lambda: all(frig.link_ups(a) > n for a, n in zip(fleet, ups, strict=True)), 60, "links up")
        await asyncio.sleep(3)
        for traffic in traffics:
            await traffic.finish()
    made_until = time.time()
    for a in fleet:
        await until(lambda a=a: _complete(frig, a.device_id, made_until), 120, f"every report of {a.device_id}")
    for a, traffic in zip(fleet, traffics, strict=True):
        assert failures(traffic.outcomes) == [], failures(traffic.outcomes)[:5]
        rows = await frig.stored(a.device_id)
        _check_stored(rows)
        # The outage's reports (about one a second) all arrived, and in order: each was stored when it first
        # reached a hub, so received_at grows with seq.
        during = [r for r in rows if r[3] > r[2] + 2.0]  # waited more than 2 s for a broker
        assert len(during) >= down_s * 0.6, f"{a.device_id}: {len(during)} reports made while the broker was down"
        received = [r[3] for r in rows]
        assert received == sorted(received), f"{a.device_id}: reports stored out of order"
    assert served_down > 5 * down_s * agents  # requests kept being served while the broker was away
    print(f"broker down {down_s:.0f} s, agents={agents}: reports stored "
          f"{[len(await frig.stored(a.device_id)) for a in fleet]}, none lost, none twice, in order")  # fmt: skip


@pytest.mark.timeout(240)
async def test_broker_down_20s_every_report_delivered_in_order(frig: FaultRig) -> None:
    await _broker_down(frig, down_s=20.0)


@pytest.mark.timeout(900)
@soak_only[0]
@soak_only[1]
async def test_broker_down_5min_soak(frig: FaultRig) -> None:
    await _broker_down(frig, down_s=300.0)
