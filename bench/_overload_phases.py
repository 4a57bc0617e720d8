"""The phases of one bench/overload.py workload, on the agent and then on the FIFO server.

Agent (its safety cell and main process) on AGENT_CPU, pool and load generators on POOL_CPU. Phases:
capacities (closed loop, 16 clients, on the local-only `capacity` pipeline: best-effort-shaped and
safety-shaped requests; the pool directly), safety alone (the baseline), safety + best-effort overload,
the same with a CPU hog, then the same two overloads through the FIFO server of bench/_bare_v2.py.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import _overload_procs as procs
from bench._overload_metrics import AgentView, Snapshot, scrape_both, view
from bench._proc import descendants, loadavg, nice_of, tree_cpu_s
from bench.serving import wait_http
from models.zoo import ZOO_PUBLIC_KEY_FILE, zoo_package_path
from protocols.binary import encode_request

CAP_SECONDS = 4.0
SAFETY_SHARE, BE_FACTOR = 0.2, 3.0


@dataclass(frozen=True)
class Workload:
    """One model under overload."""

    name: str
    model: str
    version: str
    shape: tuple[int, ...]  # one row, without the batch axis
    be_rows: int


@dataclass
class Capacity:
    """Closed-loop answered requests per second."""

    local_be: float  # best-effort-shaped requests, agent's main process, local only
    local_safety: float  # safety-shaped (1-row) requests, same pipeline
    pool_be: float  # best-effort-shaped requests, the pool directly
    cpu_ms: dict[str, float]  # the agent's CPU per request in the local capacity runs, by request shape


@dataclass
class Phase:
    """One load phase: the client's results and, on the agent, the agent's view per pipeline."""

    client: dict[str, Any]
    agent: dict[str, AgentView] = field(default_factory=dict)
    loadavg: str = "-"


@dataclass
class WorkloadResult:
    """Everything one workload measured."""

    workload: Workload
    capacity: Capacity
    safety_rate: float
    be_rate: float
    safety_addr: str
    nices: str
    phases: dict[str, Phase]  # baseline, overload, overload+hog, fifo, fifo+hog


def stream(name: str, model: str, body: tuple[Path, int | None], port: int, **load: Any) -> dict[str, Any]:
    """A loadgen stream spec (`nice` is read by the launcher)."""
    path, length = body
    return {
        "name": name,
        "path": f"/v2/models/{model}/infer",
        "body_file": str(path),
        "header_length": length,
        "port": port,
        **load,
    }


def closed(name: str, model: str, body: tuple[Path, int | None], port: int) -> dict[str, Any]:
    """A 16-client closed-loop stream at the flood's priority, for capacities."""
    return stream(name, model, body, port, clients=16, timeout_s=10, nice=procs.FLOOD_NICE)


def capacity_of(tmp: Path, spec: dict[str, Any], server_pid: int) -> tuple[float, float]:
    """Answered requests per second of a closed-loop stream, after a 1 s warm-up, and the server's CPU ms
    (its process tree, from /proc) per answered request."""
    procs.loadgen(tmp, [spec], 1.0)
    cpu_before = tree_cpu_s(server_pid)
    result = procs.loadgen(tmp, [spec], CAP_SECONDS)
    cpu_s = tree_cpu_s(server_pid) - cpu_before
    answered = result["streams"][spec["name"]]
    if not answered["latencies"]:
        raise RuntimeError(f"no request to port {spec['port']} {spec['path']} answered 200: {answered['statuses']}")
    n = len(answered["latencies"])
    return n / float(result["elapsed_s"]), cpu_s * 1000 / n


def write_bodies(tmp: Path, work: Workload) -> dict[str, tuple[Path, int | None]]:
    """Binary V2 bodies: one row for safety, `be_rows` rows for best effort."""
    rng = np.random.default_rng(7)
    bodies = {}
    for name, rows in (("safety", 1), ("be", work.be_rows)):
        x = rng.standard_normal((rows, *work.shape)).astype(np.float32)
        data, length = encode_request(inputs={"input": x})
        path = tmp / f"{work.name}-{name}.body"
        path.write_bytes(data)
        bodies[name] = (path, length)
    return bodies


def tree_nices(pid: int) -> str:
    """ "pid:nice" of a process and its descendants."""
    out = []
    for one in descendants(pid):
        with contextlib.suppress(OSError):
            out.append(f"{one}:{nice_of(one)}")
    return ",".join(out)


def agent_phase(
    tmp: Path, streams: list[dict[str, Any]], seconds: float, ports: tuple[int, int], *, hog: bool = False
) -> Phase:
    """One load phase against the agent, with its /metrics read around it."""
    safety_port, main_port = ports
    before = scrape_both(safety_port, main_port)
    client = _run(tmp, streams, seconds, hog=hog)
    after = scrape_both(safety_port, main_port)
    phase = Phase(client, loadavg=loadavg())
    for s in streams:
        model = s["path"].split("/")[3]
        snaps: tuple[Snapshot, Snapshot] = (before[0], after[0]) if s["port"] == safety_port else (before[1], after[1])
        deadline = procs.SAFETY_DEADLINE_S if s["name"] == "safety" else procs.BE_DEADLINE_S
        phase.agent[s["name"]] = view(*snaps, model, deadline)
    return phase


def _run(tmp: Path, streams: list[dict[str, Any]], seconds: float, *, hog: bool) -> dict[str, Any]:
    if not hog:
        return procs.loadgen(tmp, streams, seconds)
    with procs.Hog():
        return procs.loadgen(tmp, streams, seconds)


def run_workload(tmp: Path, work: Workload, seconds: float) -> WorkloadResult:
    """All phases of one workload; returns what they measured."""
    wtmp = tmp / work.name
    models = wtmp / "models"
    package = models / work.model / work.version
    shutil.copytree(zoo_package_path(work.model, work.version), package)
    bodies = write_bodies(wtmp, work)
    pool_port, main_port, cell_port = procs.ports()
    pool_cmd = procs.edge_agent("--standalone", "--model-dir", str(models), "--trust", str(ZOO_PUBLIC_KEY_FILE))
    pool = procs.start(
        [*pool_cmd, "--port", str(pool_port), "--threads", "1"],
        procs.POOL_CPU,
        wtmp / "pool.log",
        nice=procs.FLOOD_NICE,
    )
    config = procs.agent_config(
        wtmp, work.model, port=main_port, cell_port=cell_port, pool_url=f"http://127.0.0.1:{pool_port}"
    )
    agent = procs.start(procs.edge_agent("--config", str(config)), procs.AGENT_CPU, wtmp / "agent.log")
    phases: dict[str, Phase] = {}
    try:
        wait_http(f"http://127.0.0.1:{pool_port}/v2/health/ready", pool)
        wait_http(f"http://127.0.0.1:{main_port}/v2/health/ready", agent)
        safety_port, what = procs.safety_address(cell_port, main_port, agent)
        if safety_port == cell_port:
            wait_http(f"http://127.0.0.1:{cell_port}/v2/health/ready", agent)
        safety_addr = f"http://127.0.0.1:{safety_port} ({what})"
        print(f"# {work.name}: safety client -> {safety_addr}", flush=True)
        nices = f"agent[{tree_nices(agent.pid)}] pool[{tree_nices(pool.pid)}]"
        local_be, be_cpu = capacity_of(wtmp, closed("c", "capacity", bodies["be"], main_port), agent.pid)
        local_safety, safety_cpu = capacity_of(wtmp, closed("c", "capacity", bodies["safety"], main_port), agent.pid)
        pool_be, _ = capacity_of(wtmp, closed("c", work.model, bodies["be"], pool_port), pool.pid)
        cap = Capacity(local_be, local_safety, pool_be, {"be": be_cpu, "safety": safety_cpu})
        safety_rate, be_rate = SAFETY_SHARE * cap.local_safety, BE_FACTOR * cap.local_be
        print(
            f"# {work.name} capacity req/s: local_be={cap.local_be:.0f} ({work.be_rows} rows) "
            f"local_safety={cap.local_safety:.0f} (1 row) pool_be={cap.pool_be:.0f}; "
            f"offered: safety={safety_rate:.0f}/s best_effort={be_rate:.0f}/s; agent CPU ms per request at "
            f"capacity: {work.be_rows} rows {be_cpu:.2f}, 1 row {safety_cpu:.2f}",
            flush=True,
        )
        safety = stream(
            "safety",
            "collision",
            bodies["safety"],
            safety_port,
            rate=safety_rate,
            timeout_s=2,
            nice=procs.SAFETY_CLIENT_NICE,
        )
        flood = stream("be", "analytics", bodies["be"], main_port, rate=be_rate, timeout_s=2, nice=procs.FLOOD_NICE)
        where = (safety_port, main_port)
        phases["baseline"] = agent_phase(wtmp, [safety], seconds, where)
        phases["overload"] = agent_phase(wtmp, [safety, flood], seconds, where)
        phases["overload+hog"] = agent_phase(wtmp, [safety, flood], seconds, where, hog=True)
    finally:
        procs.stop(agent)
    try:
        phases.update(
            fifo_phases(wtmp, work, package=package, bodies=bodies, rates=(safety_rate, be_rate), seconds=seconds)
        )
    finally:
        procs.stop(pool)
    return WorkloadResult(work, cap, safety_rate, be_rate, safety_addr, nices, phases)


def fifo_phases(
    tmp: Path,
    work: Workload,
    *,
    package: Path,
    bodies: dict[str, tuple[Path, int | None]],
    rates: tuple[float, float],
    seconds: float,
) -> dict[str, Phase]:
    """The same overload (and with the hog) through the plain FIFO server, pinned where the agent was."""
    port = procs.ports()[0]
    bare = procs.start(
        [sys.executable, "-m", "bench._bare_v2", str(port), "1", str(package)], procs.AGENT_CPU, tmp / "bare.log"
    )
    try:
        warm = stream("w", work.model, bodies["safety"], port, clients=1, timeout_s=2)
        deadline = time.monotonic() + 30
        while True:
            try:
                procs.loadgen(tmp, [warm], 0.5)
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        load = [
            stream(
                "safety", work.model, bodies["safety"], port, rate=rates[0], timeout_s=2, nice=procs.SAFETY_CLIENT_NICE
            ),
            stream("be", work.model, bodies["be"], port, rate=rates[1], timeout_s=2, nice=procs.FLOOD_NICE),
        ]
        out = {"fifo": Phase(_run(tmp, load, seconds, hog=False), loadavg=loadavg())}
        out["fifo+hog"] = Phase(_run(tmp, load, seconds, hog=True), loadavg=loadavg())
        return out
    finally:
        procs.stop(bare)
