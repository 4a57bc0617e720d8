"""The lines bench/overload.py prints for one workload (the figures are defined in its docstring)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench._overload_phases import SAFETY_SHARE, Phase, WorkloadResult
from bench._overload_procs import BE_DEADLINE_S, SAFETY_DEADLINE_S

TIMEOUT_S = 2.0  # the loadgen's timeout: an unanswered request counts at this latency in FIFO's p99


def p99_ms(latencies: list[float]) -> float:
    """99th percentile in ms (nan if empty)."""
    return float(np.percentile(latencies, 99) * 1000) if latencies else float("nan")


def within(client: dict[str, Any], name: str, deadline_s: float) -> int:
    """Requests of a stream answered 200 within the deadline."""
    return sum(1 for x in client["streams"][name]["latencies"] if x <= deadline_s)


def safety_p99_ms(phase: Phase) -> float:
    """The client's safety p99, unanswered requests counted at the loadgen's timeout."""
    s = phase.client["streams"]["safety"]
    return p99_ms(s["latencies"] + [TIMEOUT_S] * s["statuses"].get("timeout", 0))


def goodput_rps(phase: Phase) -> float:
    """Best-effort requests answered 200 within their deadline (local or cloud), per second of sending (the
    drain after it, up to the 2 s timeout, is not counted: every request in it was sent in the window)."""
    return within(phase.client, "be", BE_DEADLINE_S) / float(phase.client["duration_s"])


def report(result: WorkloadResult) -> list[str]:
    """The `overload <workload>[ +hog]:` line and a raw line for each agent overload phase."""
    cap = result.capacity
    achievable = cap.pool_be + cap.local_be * (1 - SAFETY_SHARE)
    base = result.phases["baseline"]
    base_p99 = safety_p99_ms(base)
    lines = []
    for suffix in ("", "+hog"):
        phase, fifo = result.phases["overload" + suffix], result.phases["fifo" + suffix]
        s, be = phase.client["streams"]["safety"], phase.client["streams"]["be"]
        agent_s, agent_be = phase.agent["safety"], phase.agent["be"]
        missed = s["sent"] - within(phase.client, "safety", SAFETY_DEADLINE_S)
        offloaded = s["routes"].get("cloud", 0) + agent_s.routes.get("cloud", 0)
        label = result.workload.name + (" +hog" if suffix else "")
        lines.append(
            f"overload {label}: safety_p99_ratio={safety_p99_ms(phase) / base_p99:.2f} safety_missed={missed} "
            f"safety_offloaded={offloaded} goodput_ratio={goodput_rps(phase) / achievable:.2f} "
            f"fifo_safety_p99_ratio={safety_p99_ms(fifo) / base_p99:.2f}"
        )
        elapsed = float(phase.client["duration_s"])
        fifo_s = fifo.client["streams"]["safety"]
        lines.append(
            f"overload {label} raw: safety_addr={result.safety_addr.split()[0]} "
            f"client_safety_p99_ms={safety_p99_ms(phase):.2f} agent_safety_p99_ms{agent_s.p99_text()} "
            f"client_baseline_safety_p99_ms={base_p99:.2f} "
            f"agent_baseline_safety_p99_ms{base.agent['safety'].p99_text()} "
            f"client_safety_over_50ms={s['sent'] - within(phase.client, 'safety', SAFETY_DEADLINE_S)}/{s['sent']} "
            f"agent_safety_over_50ms={agent_s.over}/{agent_s.count} safety_statuses={s['statuses']} "
            f"client_be_p99_ms={p99_ms(be['latencies']):.1f} agent_be_p99_ms{agent_be.p99_text()} "
            f"agent_be_over_500ms={agent_be.over}/{agent_be.count} agent_be_routes={agent_be.routes} "
            f"be_goodput_rps={goodput_rps(phase):.0f} achievable_rps={achievable:.0f} "
            f"be_offered_rps={be['sent'] / elapsed:.0f} (target {result.be_rate:.0f}) "
            f"safety_offered_rps={s['sent'] / elapsed:.0f} (target {result.safety_rate:.0f}) "
            f"be_statuses={be['statuses']} be_routes={be['routes']} "
            f"client_nice=safety:{phase.client['nice']['safety']},be:{phase.client['nice']['be']} "
            f"fifo_safety_p99_ms={safety_p99_ms(fifo):.1f} "
            f"fifo_safety_missed={fifo_s['sent'] - within(fifo.client, 'safety', SAFETY_DEADLINE_S)} "
            f"fifo_be_goodput_rps={goodput_rps(fifo):.0f} loadavg={phase.loadavg}"
        )
    return lines
