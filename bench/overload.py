"""Overload benchmark: does the safety pipeline keep its deadline when best-effort traffic overloads the agent?

Two workloads, each behind two pipelines on one agent: `collision` (safety, deadline 50 ms, offload never)
and `analytics` (best_effort, deadline 500 ms, offload overflow to a standalone `edge-agent` pool):
- *compute*: mobilenet-v2 (the zoo's MobileNetV2, width 0.5, 3x160x160, ~2.7 ms a row on one core), where
  inference dominates intake;
- *intake*: tiny-cnn (3x64x64, ~0.2 ms a row), where the 393 KB bodies of 8 rows dominate.
Safety is offered open loop at SAFETY_SHARE (20 %) of the local capacity for 1-row requests, best effort
at BE_FACTOR (3x) the local capacity for its 8-row requests. Phases per workload (bench/_overload_phases.py):
capacities, safety alone (baseline), safety + overload, the same beside a CPU hog (one busy process per
core, pinned, nice 0), and the two overloads again through the FIFO server of bench/_bare_v2.py (aiohttp +
inline onnxruntime, no scheduler, admission or offload).

So that it measures the server and not the machine: agent on CPU 0, pool and load generators on CPU 1;
the safety generator runs at nice -10, the flood generator and the pool at nice +10, the safety cell at
-10 and the agent's main process at +5 (bench/_overload_procs.py); one generator process per stream. The
safety client sends to the safety cell's own listener ([safety_cell] port) and falls back to the main
listener, saying so, when nothing accepts there (an agent without the cell). Next to the client's
latencies the agent's own histogram (edgefleet_request_latency_seconds from its /metrics, per pipeline,
read before and after each phase) is printed, labelled client_* and agent_*.

Printed per workload and phase:
    overload <workload>[ +hog]: safety_p99_ratio=.. safety_missed=.. safety_offloaded=.. goodput_ratio=..
        fifo_safety_p99_ratio=..
- safety_p99_ratio: client safety p99 in the phase / client safety p99 alone (no flood, no hog);
- safety_missed: safety requests sent that did not come back 200 within 50 ms (late, refused, failed);
- safety_offloaded: safety requests answered by the pool (client's route header + agent's routes metric);
- goodput_ratio = G / (P + L x (1 - SAFETY_SHARE)), G the best-effort requests per second answered 200
  within their 500 ms deadline, locally or by the pool; P the pool's closed-loop capacity for those
  requests; L the agent's local closed-loop capacity for them: the best-effort goodput the two could
  deliver with safety's share of the local CPU set aside. The +hog phase keeps the same denominator
  (capacities measured without the hog), so it counts what the hog takes from the pool and the flood too;
- fifo_safety_p99_ratio: the FIFO server's safety p99 under the same load (+hog alike), unanswered
  requests counted at the 2 s timeout, over the agent's safety-alone p99.
plus a raw line of the figures behind them. Environment: OVERLOAD_SECONDS (per load phase, default 10),
OVERLOAD_BE_ROWS (rows per best-effort request, default 8), OVERLOAD_LOADGEN_CPU (default 1),
OVERLOAD_WORKLOADS (comma-separated, default compute,intake).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from bench import _overload_procs as procs
from bench._overload_phases import BE_FACTOR, SAFETY_SHARE, Workload, run_workload
from bench._overload_report import report
from bench._proc import loadavg

SECONDS = float(os.environ.get("OVERLOAD_SECONDS", "10"))
BE_ROWS = int(os.environ.get("OVERLOAD_BE_ROWS", "8"))
WORKLOADS = {
    "compute": Workload("compute", "mobilenet-v2", "1", (3, 160, 160), BE_ROWS),
    "intake": Workload("intake", "tiny-cnn", "2", (3, 64, 64), BE_ROWS),
}


def main() -> int:
    """Run the named workloads and print their lines."""
    names = [n for n in os.environ.get("OVERLOAD_WORKLOADS", "compute,intake").split(",") if n]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        print(f"overload: unknown workload(s) {unknown}; have {sorted(WORKLOADS)}", file=sys.stderr)
        return 2
    print(
        f"# {procs.CPUS} CPUs: agent/bare on CPU {procs.AGENT_CPU}, pool on CPU {procs.POOL_CPU}, loadgen on CPU "
        f"{procs.LOADGEN_CPU}; nice: safety client {procs.SAFETY_CLIENT_NICE}, flood and pool {procs.FLOOD_NICE}, "
        f"cell {procs.CELL_NICE}, agent main {procs.MAIN_NICE}, hog 0; onnxruntime 1 thread; {SECONDS:g} s per "
        f"load phase; safety at {SAFETY_SHARE:.0%} of local 1-row capacity, best effort at {BE_FACTOR:g}x local "
        f"capacity in {BE_ROWS}-row requests; loadavg {loadavg()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="edgefleet-overload-") as tmp_name:
        for name in names:
            result = run_workload(Path(tmp_name), WORKLOADS[name], SECONDS)
            print(f"# {name} process nice values: {result.nices}", flush=True)
            for line in report(result):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
