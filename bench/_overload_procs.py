"""Processes of bench/overload.py: the agent (and its safety cell), the pool, the FIFO server, the load
generators and the CPU hog, each with its CPU pinning and OS priority.

Priorities (nice; the bench runs as root, so negative values apply): the safety load generator at
SAFETY_CLIENT_NICE (-10), so its latencies are not its own wait for a CPU behind the flood; the flood
generator and the pool at FLOOD_NICE (+10); the agent sets its own (the safety cell's `nice`, -10, and the
main process's `main_nice`, +5, written into its [safety_cell] section); the hog at 0, the default.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.serving import pinned
from deploy.local.procs import free_port
from models.zoo import ZOO_PUBLIC_KEY_FILE

ROOT = Path(__file__).resolve().parent.parent
CPUS = os.cpu_count() or 1
AGENT_CPU, POOL_CPU = ("0", "1") if CPUS >= 2 else (None, None)
LOADGEN_CPU = os.environ.get("OVERLOAD_LOADGEN_CPU", "1") if CPUS >= 2 else None
SAFETY_CLIENT_NICE, FLOOD_NICE = -10, 10
CELL_NICE, MAIN_NICE = -10, 5
SAFETY_DEADLINE_S, BE_DEADLINE_S = 0.050, 0.500
CELL_WAIT_S = 15.0  # how long the safety cell's listener may take to accept after the main one is ready


def niced(cmd: list[str], nice: int | None) -> list[str]:
    """Prefix `cmd` with `nice -n` (absolute from the bench's own 0), so every thread it starts inherits it."""
    return ["nice", "-n", str(nice), *cmd] if nice is not None and shutil.which("nice") else cmd


def start(cmd: list[str], cpu: str | None, log: Path, *, nice: int | None = None) -> subprocess.Popen[bytes]:
    """Start a server pinned to `cpu` at `nice`, output to a log file, in a session of its own."""
    with log.open("wb") as out:
        return subprocess.Popen(
            niced(pinned(cmd, cpu), nice), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def edge_agent(*args: str) -> list[str]:
    """The `edge-agent serve` command line."""
    return [sys.executable, "-m", "edge_agent", "--log-level", "WARNING", "serve", *args]


def agent_config(tmp: Path, model: str, *, port: int, cell_port: int, pool_url: str) -> Path:
    """The agent's TOML: safety + best-effort pipelines, a local-only pipeline for capacity, one pool, and the
    safety cell on a port of its own."""
    text = f"""
state_dir = "state"
model_dirs = ["models"]
trusted_keys = ["{ZOO_PUBLIC_KEY_FILE}"]
expose_models = false

[http]
port = {port}

[safety_cell]
enabled = true
host = "127.0.0.1"
port = {cell_port}
nice = {CELL_NICE}
main_nice = {MAIN_NICE}

[runtime]
type = "onnxruntime"
intra_op_threads = 1
inter_op_threads = 1

[[pipelines]]
name = "collision"
model = "{model}"
priority = "safety"
deadline_ms = {int(SAFETY_DEADLINE_S * 1000)}

[[pipelines]]
name = "analytics"
model = "{model}"
priority = "best_effort"
deadline_ms = {int(BE_DEADLINE_S * 1000)}

[[pipelines]]
name = "capacity"
model = "{model}"
priority = "standard"
deadline_ms = 60000
offload = "never"

[[pools]]
name = "pool-a"
url = "{pool_url}"
"""
    path = tmp / f"agent-{model}.toml"
    path.write_text(text)
    return path


def accepting(port: int) -> bool:
    """True if something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def safety_address(cell_port: int, main_port: int, agent: subprocess.Popen[bytes]) -> tuple[int, str]:
    """The port the safety client uses and what it is: the cell's listener once it accepts, else (an agent
    without the safety cell) the main listener, which then serves the safety pipeline itself."""
    deadline = time.monotonic() + CELL_WAIT_S
    while time.monotonic() < deadline and agent.poll() is None:
        if accepting(cell_port):
            return cell_port, "safety cell listener"
        time.sleep(0.1)
    return main_port, f"main listener (nothing accepted on the cell's port {cell_port} within {CELL_WAIT_S:.0f} s)"


def loadgen(tmp: Path, streams: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Run one bench/_loadgen.py process per stream, pinned to LOADGEN_CPU at the stream's `nice`.

    One process per stream: the safety stream's latencies must not include the best-effort generator's own
    event loop (hundreds of MB/s of bodies keep it busy), only the server's and the OS's. Each stream names
    its `port`. Returns per-stream results and each generator's nice as it applied it.
    """
    procs = []
    for s in streams:
        spec = {"host": "127.0.0.1", "duration_s": seconds, "streams": [s]}
        path = tmp / f"spec-{s['name']}.json"
        path.write_text(json.dumps(spec))
        cmd = niced(pinned([sys.executable, "-m", "bench._loadgen", str(path)], LOADGEN_CPU), s.get("nice"))
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    result: dict[str, Any] = {"elapsed_s": 0.0, "duration_s": seconds, "streams": {}, "nice": {}}
    for proc, s in zip(procs, streams, strict=True):
        out, err = proc.communicate()
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, out, err)
        one = json.loads(out.strip().splitlines()[-1])
        result["elapsed_s"] = max(result["elapsed_s"], one["elapsed_s"])
        result["streams"].update(one["streams"])
        result["nice"][s["name"]] = one["nice"]
    return result


class Hog:
    """One busy-looping process per core, each pinned to its core, at the default priority (nice 0)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Hog:
        for cpu in range(CPUS):
            cmd = pinned([sys.executable, "-c", "while True: pass"], str(cpu) if CPUS >= 2 else None)
            self.procs.append(subprocess.Popen(cmd, start_new_session=True))
        time.sleep(0.5)  # let them reach their loops before the phase starts
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait, SIGKILL if it does not go (the agent stops its own children on SIGTERM)."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ports() -> tuple[int, int, int]:
    """Free ports for the pool, the agent's main listener and its safety cell."""
    picked: set[int] = set()
    while len(picked) < 3:
        picked.add(free_port())
    pool, main, cell = sorted(picked)
    return pool, main, cell
